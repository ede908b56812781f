#ifndef SMTPTAP_NOTIFY_H
#define SMTPTAP_NOTIFY_H

/*
 * The service manager's notifications (systemd Type=notify, through libsystemd's sd_notify):
 * nothing is sent without NOTIFY_SOCKET, and only the process that called notify_init sends
 * (the workers it forks stay silent: systemd listens to the main process).
 */
void notify_init(void);
void notify_ready(void);
/* Start-up has succeeded: the pid file written (--pid-file), then READY=1. */
void notify_started(void);
void notify_reloading(void);
void notify_stopping(void);

#endif
