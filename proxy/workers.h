#ifndef SMTPTAP_WORKERS_H
#define SMTPTAP_WORKERS_H

struct proxy;

enum workers_role { WORKERS_IN_WORKER, WORKERS_SUPERVISED };

/*
 * Forks the --workers processes and supervises them.  Returns WORKERS_IN_WORKER in each worker
 * (which then serves sessions with the loop the start-up built), and WORKERS_SUPERVISED in the
 * supervisor once every worker has ended after a SIGTERM or SIGINT.  On SIGHUP the supervisor
 * calls reload, then passes the signal on.
 */
enum workers_role workers_run(struct proxy *px, unsigned nworkers, void (*reload)(struct proxy *));
/* In a worker, once its signal events are in place: lets the signals through. */
void workers_signals_ready(void);

#endif
