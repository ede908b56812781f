#ifndef SMTPTAP_JOURNAL_H
#define SMTPTAP_JOURNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

struct event_base;

/*
 * The journal: one append-only file per UTC day, LOGDIR/YYYY-MM-DD.log, shared by every
 * worker.  Each process buffers the records of all its sessions for a day in one buffer and
 * writes it whole, when it passes JOURNAL_FLUSH_AT, once a second and at shutdown.
 */
#define JOURNAL_FLUSH_AT (64 * 1024)

/* A place in a day's buffer whose file offset becomes known when its batch is written. */
struct journal_mark {
	TAILQ_ENTRY(journal_mark) entry;
	size_t pos;    /* in the buffer, while pending */
	int64_t offset; /* in the file once written; -1: not written (the batch failed) */
	int pending;
};

/*
 * Told where a mark's record landed once its batch is written: the file's name and the
 * offset, or -1 when the batch was lost.  (The event line waits for its session's records
 * this way rather than forcing a write per session.)
 */
typedef void journal_wait_fn(void *arg, const char *file, int64_t offset);

struct journal_wait {
	TAILQ_ENTRY(journal_wait) entry;
	int pending;    /* the mark's record is in this batch, at pos */
	size_t pos;     /* in the buffer */
	int64_t offset; /* else where it was written (-1: lost) */
	journal_wait_fn *fn;
	void *arg;
};

/* The records of one day waiting to be written. */
struct journal {
	char *buf;
	size_t len;
	size_t cap;
	long day; /* days since 1970-01-01 (UTC); -1: the slot is free */
	char name[16]; /* YYYY-MM-DD.log */
	int fd;
	dev_t dev;
	ino_t ino;
	int need_nl; /* the file ends with a torn record: the next batch starts with a line end */
	int recent;  /* written to since the last tick */
	uint64_t owner;   /* the recorder that put the latest record here (transcript.c) */
	uint64_t batches; /* batches written (or dropped) from this buffer */
	TAILQ_HEAD(, journal_mark) marks;
	TAILQ_HEAD(, journal_wait) waits; /* told after the next batch, in order */
};

/* Opens (creating 0750) the log directory, prunes (keep_days >= 0) and starts the tick. */
int journal_init(struct event_base *base, const char *log_dir, int keep_days);
/* Writes what is buffered and closes everything. */
void journal_shutdown(void);
/* With worker processes: batches are written under this lock (exact offsets, no torn lines). */
void journal_share_lock(pthread_mutex_t *lock);

/* The buffer for the records of day (days since the epoch); NULL when there is none. */
struct journal *journal_get(long day);
/* Room for n more octets in j's buffer: 0, or -1 when memory is short. */
int journal_reserve(struct journal *j, size_t n);
/* A record was completed: written now if the buffer has grown past JOURNAL_FLUSH_AT. */
void journal_written(struct journal *j);
/* Marks the current end of j's buffer (the start of the record about to be made). */
void journal_mark(struct journal *j, struct journal_mark *m);
/* Forgets a mark still pending (its owner goes away before its batch is written). */
void journal_unmark(struct journal *j, struct journal_mark *m);
/*
 * fn(arg, file, offset) once what j's buffer holds now is written (or lost), with the offset
 * of mark m's record (in that batch if still pending): 0, or -1 when memory is short (fn is
 * not called).  The mark may go meanwhile; its place is kept here.
 */
int journal_after(struct journal *j, const struct journal_mark *m, journal_wait_fn *fn,
                  void *arg);
/* Writes j's buffer now: 0, or -1 when the write failed (the batch is dropped). */
int journal_flush(struct journal *j);
/* Writes every day's buffer now. */
void journal_flush_all(void);
/* The file name (YYYY-MM-DD.log) of day into buf (16 octets). */
void journal_day_name(long day, char buf[16]);

/* Checks the log directory is still the one named (SIGHUP): reopens it if it was replaced. */
void journal_reopen(void);
/* Removes journal files dated before today minus keep_days; the number removed. */
int journal_prune(long today, int keep_days);

/* Whether the latest journal write failed (disk full, permissions...). */
int journal_failing(void);
/* Failed batches since start. */
uint64_t journal_write_errors(void);
/* The log directory's descriptor (-1 before init). */
int journal_dir_fd(void);

#endif
