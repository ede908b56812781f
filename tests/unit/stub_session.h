/*
 * A session stub for the unit tests of the modules that work on one (message.c,
 * reply_edit.c): options, a proxy and a session on buffer events with no socket, under the
 * rules given.  Include after cmocka.h.
 */
#ifndef SMTPTAP_TEST_STUB_SESSION_H
#define SMTPTAP_TEST_STUB_SESSION_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "filters/rules.h"
#include "proxy/conn.h"
#include "proxy/filter.h"
#include "proxy/message.h"
#include "proxy/options.h"
#include "proxy/proxy.h"

struct stub {
	struct event_base *base;
	struct options opts;
	struct proxy px;
	struct session s;
	struct ruleset *rs;
	size_t seen; /* octets of the server's output already checked */
};

static inline void
stub_init(struct stub *t, const char *rules)
{
	char path[] = "/tmp/test_stub.XXXXXX";
	const char *files[1] = {path};
	FILE *fp;
	int fd;

	memset(t, 0, sizeof(*t));
	assert_non_null(t->base = event_base_new());
	t->opts.tls_mode = TLS_PASSTHROUGH;
	t->opts.record = RECORD_BODY;
	t->opts.max_line = 65536; /* a rewrite beyond it would be refused */
	t->opts.max_header = 102400;
	t->opts.hold_memory = 1048576;
	t->opts.max_message = 52428800;
	t->px.opts = &t->opts;
	t->s.px = &t->px;
	t->s.client.s = &t->s;
	t->s.server.s = &t->s;
	t->s.client.peer = &t->s.server;
	t->s.server.peer = &t->s.client;
	assert_non_null(t->s.client.bev = bufferevent_socket_new(t->base, -1, 0));
	assert_non_null(t->s.server.bev = bufferevent_socket_new(t->base, -1, 0));
	t->s.client.in = bufferevent_get_input(t->s.client.bev);
	t->s.client.out = bufferevent_get_output(t->s.client.bev);
	t->s.server.in = bufferevent_get_input(t->s.server.bev);
	t->s.server.out = bufferevent_get_output(t->s.server.bev);
	assert_true((fd = mkstemp(path)) >= 0);
	assert_non_null(fp = fdopen(fd, "w"));
	fputs(rules, fp);
	fclose(fp);
	assert_non_null(fp = fopen("/dev/null", "w"));
	t->rs = rules_load(files, 1, fp);
	fclose(fp);
	unlink(path);
	assert_non_null(t->rs);
	assert_int_equal(filter_session_init(&t->s, t->rs), 0);
}

static inline void
stub_free(struct stub *t)
{
	message_free(&t->s);
	filter_session_free(&t->s);
	rules_free(t->rs);
	bufferevent_free(t->s.client.bev);
	bufferevent_free(t->s.server.bev);
	event_base_free(t->base);
}

#endif
