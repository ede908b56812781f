#ifndef SMTPTAP_PIDFILE_H
#define SMTPTAP_PIDFILE_H

/*
 * --pid-file: opened (created) at start-up while the process may still be root, so that it
 * can live in a directory the --user cannot write; the pid goes in only once start-up has
 * succeeded (pidfile_write), and it goes at exit: removed, or emptied where the dropped
 * user may not remove it.  Only the process that wrote it removes it (not the workers).
 */
int pidfile_open(const char *path);
void pidfile_write(void);
void pidfile_remove(void);

#endif
