/*
 * A test's scratch directory: made with mkdtemp, removed with the files in it (the tests
 * make no subdirectories).
 */
#ifndef SMTPTAP_TEST_TMPDIR_H
#define SMTPTAP_TEST_TMPDIR_H

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static inline void
tmpdir_remove(const char *path)
{
	char file[256];
	struct dirent *de;
	DIR *d;

	if ((d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(file, sizeof(file), "%s/%s", path, de->d_name);
		unlink(file);
	}
	closedir(d);
	rmdir(path);
}

#endif
