/* What all sessions share: places under --max-sessions; the loop ends when the last goes. */
#include "proxy/proxy.h"

#include <event2/event.h>

#include "logs/log.h"
#include "proxy/options.h"

unsigned
proxy_sessions_total(const struct proxy *px)
{
	unsigned total = 0;

	if (px->shared == NULL)
		return px->nsessions;
	for (unsigned i = 0; i < OPT_MAX_WORKERS; i++)
		total += atomic_load(&px->shared->of_worker[i]);
	return total;
}

int
proxy_session_admit(struct proxy *px)
{
	if (px->shared == NULL)
		return px->nsessions >= px->opts->max_sessions ? -1 : 0;
	/*
	 * The place is taken before the count is read: of two workers taking the last place at
	 * once, at least one sees both and gives its place back.  (Both may, once: a client
	 * turned away at the limit, never one let in beyond it.)
	 */
	atomic_fetch_add(&px->shared->of_worker[px->worker], 1);
	if (proxy_sessions_total(px) > px->opts->max_sessions) {
		atomic_fetch_sub(&px->shared->of_worker[px->worker], 1);
		return -1;
	}
	return 0;
}

void
proxy_session_unadmit(struct proxy *px)
{
	if (px->shared != NULL)
		atomic_fetch_sub(&px->shared->of_worker[px->worker], 1);
}

void
proxy_session_gone(struct proxy *px)
{
	proxy_session_unadmit(px);
	if (px->shutting_down && px->nsessions == 0)
		event_base_loopexit(px->base, NULL);
}
