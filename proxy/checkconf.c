/* --check-config (see checkconf.h). */
#include "proxy/checkconf.h"

#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "filters/rules.h"
#include "logs/log.h"
#include "proxy/options.h"
#include "proxy/tls.h"

static int
checkconf_rules(const struct options *o)
{
	struct ruleset *rs;

	if (o->nrules == 0)
		return 0;
	if ((rs = rules_load(o->rules, o->nrules, stderr)) == NULL)
		return 1;
	rules_free(rs);
	return 0;
}

/* Certificate and key (matching), CA file: tls_init logs OpenSSL's reasons. */
static int
checkconf_tls(const struct options *o)
{
	int rc = tls_init(o);

	tls_cleanup();
	if (rc == 0)
		return 0;
	fprintf(stderr, "smtptap: TLS: certificate, key or CA file unusable (above)\n");
	return 1;
}

static int
checkconf_readable(const char *what, const char *path)
{
	if (path == NULL || access(path, R_OK) == 0)
		return 0;
	fprintf(stderr, "smtptap: %s %s: not readable: %s\n", what, path, strerror(errno));
	return 1;
}

/* The log directory: usable, or creatable in its parent. */
static int
checkconf_log_dir(const char *dir)
{
	struct stat st;
	char *copy, *parent;
	int bad = 0;

	if (stat(dir, &st) == 0) {
		if (!S_ISDIR(st.st_mode) || access(dir, W_OK | X_OK) != 0) {
			fprintf(stderr, "smtptap: log-dir %s: not a writable directory\n", dir);
			return 1;
		}
		return 0;
	}
	if ((copy = strdup(dir)) == NULL)
		return 1;
	parent = dirname(copy);
	if (access(parent, W_OK | X_OK) != 0) {
		fprintf(stderr, "smtptap: log-dir %s: missing, and %s is not writable\n", dir,
		        parent);
		bad = 1;
	}
	free(copy);
	return bad;
}

/* What a SIGHUP reads again, by the process as it runs (after --user). */
static int
checkconf_reread(const struct options *o)
{
	int bad = 0;

	bad += checkconf_readable("config", o->config_file);
	for (int i = 0; i < o->nrules; i++)
		bad += checkconf_readable("rules", o->rules[i]);
	bad += checkconf_readable("tls-cert", o->tls_cert);
	bad += checkconf_readable("tls-key", o->tls_key);
	bad += checkconf_readable("upstream-ca", o->upstream_ca);
	return bad;
}

/*
 * The files checked as --user: in a child that has become that user (root needed), or here
 * when --user is who runs the check already.  Start-up makes the log directory the user's,
 * so as root only its creation is checked.
 */
static int
checkconf_as_user(const struct options *o)
{
	struct passwd *pw;
	pid_t pid;
	int status;

	if (o->user == NULL)
		return checkconf_reread(o) + checkconf_log_dir(o->log_dir);
	if ((pw = getpwnam(o->user)) == NULL) {
		fprintf(stderr, "smtptap: user %s: no such user\n", o->user);
		return 1;
	}
	if (pw->pw_uid == geteuid())
		return checkconf_reread(o) + checkconf_log_dir(o->log_dir);
	if (geteuid() != 0) {
		fprintf(stderr, "smtptap: note: access as %s not checked (needs root)\n", o->user);
		return 0;
	}
	if ((pid = fork()) < 0)
		return 1;
	if (pid == 0) {
		if (setgroups(1, &pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
		    setuid(pw->pw_uid) != 0)
			_exit(100);
		_exit(checkconf_reread(o) > 0);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		if (WIFEXITED(status) && WEXITSTATUS(status) == 100)
			fprintf(stderr, "smtptap: user %s: could not become it\n", o->user);
		return 1;
	}
	return checkconf_log_dir(o->log_dir);
}

int
checkconf_main(const struct options *o, int nproblems)
{
	log_init(0, 0);
	log_set_level(LOG_LEVEL_WARNING);
	nproblems += checkconf_rules(o);
	nproblems += checkconf_tls(o);
	nproblems += checkconf_as_user(o);
	fflush(stderr);
	if (nproblems > 0) {
		printf("configuration has %d problem%s\n", nproblems, nproblems == 1 ? "" : "s");
		return 1;
	}
	printf("configuration ok\n");
	return 0;
}
