/* Re-reading --config on SIGHUP (see reload.h). */
#include "proxy/reload.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "filters/rules.h"
#include "logs/escape.h"
#include "logs/log.h"
#include "proxy/addr.h"
#include "proxy/options.h"
#include "proxy/proxy.h"
#include "proxy/tls.h"

static int reload_argc;
static char **reload_argv;

/* Replaced options, kept while sessions that started under them may still read them. */
struct retired {
	struct options *opts;
	struct retired *next;
};
static struct retired *retired;

void
reload_init(int argc, char **argv)
{
	reload_argc = argc;
	reload_argv = argv;
}

/* Logs each line of a memory stream's text; frees it. */
static void
reload_log_lines(char *text, const char *prefix)
{
	char *line, *save = NULL;

	for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save))
		log_warnx("%s%s", prefix, line);
	free(text);
}

static int
same(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int
same_list(const char *const *a, int na, const char *const *b, int nb)
{
	if (na != nb)
		return 0;
	for (int i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return 1;
}

static void
ignored(const char *name)
{
	log_warnx("configuration reload: %s changed: ignored until restart", name);
}

/* A list only a restart changes: n's becomes o's, with a note when they differed. */
static void
keep_list(const char **nl, int *nn, const char *const *ol, int on, const char *name)
{
	if (!same_list(nl, *nn, ol, on))
		ignored(name);
	memcpy(nl, ol, (size_t)on * sizeof(*ol));
	*nn = on;
}

/* A file or a name only a restart changes. */
static void
keep_string(const char **n, const char *o, const char *name)
{
	if (!same(*n, o))
		ignored(name);
	*n = o;
}

/* A flag or a count only a restart changes. */
static void
keep_int(int *n, int o, const char *name)
{
	if (*n != o)
		ignored(name);
	*n = o;
}

/* What only a restart changes: the new options take the running values, with a note. */
static void
reload_keep_restart_only(struct options *n, const struct options *o)
{
	keep_list(n->listen, &n->nlisten, o->listen, o->nlisten, "listen");
	keep_list(n->listen_tls, &n->nlisten_tls, o->listen_tls, o->nlisten_tls, "listen-tls");
	keep_list(n->listen_transparent, &n->nlisten_transparent, o->listen_transparent,
	          o->nlisten_transparent, "listen-transparent");
	if (n->workers != o->workers)
		ignored("workers");
	n->workers = o->workers;
	keep_string(&n->log_dir, o->log_dir, "log-dir");
	keep_int(&n->keep_days, o->keep_days, "keep-days"); /* the journal took it at start */
	/* o->events was filled in with the default path at start-up: compare what was given. */
	if (n->events_off != o->events_off || (n->events != NULL && !same(n->events, o->events)))
		ignored("events");
	n->events = o->events;
	n->events_off = o->events_off;
	keep_int(&n->no_transcripts, o->no_transcripts, "no-transcripts");
	keep_string(&n->user, o->user, "user");
	n->user_uid = o->user_uid;
	n->user_gid = o->user_gid;
	keep_int(&n->use_syslog, o->use_syslog, "syslog");
	keep_string(&n->pid_file, o->pid_file, "pid-file");
	keep_string(&n->metrics, o->metrics, "metrics");
}

/*
 * A changed `user` waits for a restart, but a name that restart could not find is refused
 * now, while the old configuration still runs (a reload never exits): -1, logged.
 */
static int
reload_check_user(const struct options *n, const struct options *o)
{
	if (n->user == NULL || same(n->user, o->user))
		return 0;
	errno = 0;
	if (getpwnam(n->user) != NULL)
		return 0;
	log_warnx("configuration reload: user %s: %s", n->user,
	          errno != 0 ? strerror(errno) : "no such user");
	return -1;
}

int
reload_mark_settable(unsigned mark)
{
	int fd, rc = 0, err;

	if (mark == 0)
		return 0;
	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
		rc = -1;
	err = errno;
	close(fd);
	errno = err;
	return rc;
}

/*
 * upstream-mark as the process runs now (after --user, without CAP_NET_ADMIN), as start-up
 * checks it, so that a mark that can't be set fails the reload, not every session.
 */
static int
reload_check_mark(const struct options *n)
{
	if (reload_mark_settable(n->upstream_mark) == 0)
		return 0;
	log_warn("configuration reload: upstream-mark %u: SO_MARK (needs CAP_NET_ADMIN%s)",
	         n->upstream_mark, n->user != NULL ? ", which --user gives up" : "");
	return -1;
}

/* The new options with the running ones kept in them, checked together: -1, logged. */
static int
reload_check_kept(const struct options *n)
{
	if (n->nlisten_tls > 0 && n->tls_cert == NULL) {
		log_warnx("configuration reload: listen-tls (kept until restart) needs tls-cert");
		return -1;
	}
	return reload_check_mark(n);
}

/* The rules of n, every error logged; NULL when any file is bad. */
static struct ruleset *
reload_rules(const struct options *n)
{
	struct ruleset *rs;
	char *errors = NULL;
	size_t size = 0;
	FILE *mem;

	if ((mem = open_memstream(&errors, &size)) == NULL)
		return NULL;
	rs = rules_load(n->rules, n->nrules, mem);
	fclose(mem);
	reload_log_lines(errors, "rules: ");
	return rs;
}

/* The new options, parsed and checked: NULL (every problem logged) when any is wrong. */
static struct options *
reload_parse(const struct options *old)
{
	struct options *n = calloc(1, sizeof(*n));
	char *errors = NULL;
	size_t size = 0;
	FILE *mem;
	int bad;

	if (n == NULL || (mem = open_memstream(&errors, &size)) == NULL) {
		free(n);
		return NULL;
	}
	bad = options_rebuild(reload_argc, reload_argv, n, mem);
	fclose(mem);
	reload_log_lines(errors, "");
	if (bad > 0 || reload_check_user(n, old) != 0) {
		options_free(n);
		free(n);
		return NULL;
	}
	reload_keep_restart_only(n, old);
	if (reload_check_kept(n) != 0) {
		options_free(n);
		free(n);
		return NULL;
	}
	return n;
}

/* --upstream worked out again, as main's upstream_prepare does at start-up; text is n's. */
static void
reload_upstream(struct proxy *px, const struct options *n, char *text)
{
	px->upstream_salen = addr_numeric(n->upstream_host, n->upstream_port, &px->upstream_sa);
	px->upstream_sa_text[0] = '\0';
	if (px->upstream_salen > 0)
		addr_format((struct sockaddr *)&px->upstream_sa, px->upstream_sa_text,
		            sizeof(px->upstream_sa_text));
	free(px->upstream_text);
	px->upstream_text = text;
}

/*
 * The replaced options are kept, not freed: running sessions read their process's options,
 * and the new options point into the old ones' strings for the settings a restart changes.
 * A reload costs the size of one configuration file.
 */
static void
reload_retire(const struct options *old)
{
	struct retired *r = malloc(sizeof(*r));

	if (r == NULL)
		return; /* leaked rather than freed under a session */
	r->opts = (struct options *)old;
	r->next = retired;
	retired = r;
}

int
reload_config(struct proxy *px)
{
	static int opts_on_heap; /* the first options are main's, not ours to keep */
	const struct options *old = px->opts;
	struct options *n;
	struct ruleset *rs;
	char *text;

	log_info("configuration reload: reading %s", old->config_file);
	if ((n = reload_parse(old)) == NULL)
		goto keep;
	text = escape_strdup((const unsigned char *)n->upstream, strlen(n->upstream));
	if (text == NULL || (rs = reload_rules(n)) == NULL) {
		free(text);
		goto keep_free;
	}
	if (tls_reconfigure(n) != 0) {
		free(text);
		rules_free(rs);
		goto keep_free;
	}
	reload_upstream(px, n, text);
	rules_free(px->rules);
	px->rules = rs;
	px->opts = n;
	if (opts_on_heap)
		reload_retire(old);
	opts_on_heap = 1;
	log_info("configuration reloaded: %d rules, upstream %s", rules_count(rs), n->upstream);
	log_set_level(n->log_level);
	return 0;
keep_free:
	options_free(n);
	free(n);
keep:
	log_warnx("configuration reload failed: keeping the old configuration");
	return -1;
}
