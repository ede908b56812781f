/* The pending-reply queue: a TAILQ in command order. */
#include "proxy/pipeline.h"

#include <stdlib.h>
#include <string.h>

void
pipeline_init(struct pipeline *p)
{
	TAILQ_INIT(&p->queue);
	p->count = 0;
	p->remote = 0;
}

static struct pending *
pipeline_append(struct pipeline *p, enum smtp_verb verb)
{
	struct pending *e;

	if ((e = calloc(1, sizeof(*e))) == NULL)
		return NULL;
	e->verb = verb;
	e->rcpt_index = -1;
	TAILQ_INSERT_TAIL(&p->queue, e, entry);
	p->count++;
	return e;
}

struct pending *
pipeline_push(struct pipeline *p, enum smtp_verb verb)
{
	struct pending *e = pipeline_append(p, verb);

	if (e != NULL)
		p->remote++;
	return e;
}

struct pending *
pipeline_push_local(struct pipeline *p, const char *reply)
{
	struct pending *e;
	char *copy;

	if ((copy = strdup(reply)) == NULL)
		return NULL;
	if ((e = pipeline_append(p, VERB_LOCAL)) == NULL) {
		free(copy);
		return NULL;
	}
	e->local_reply = copy;
	return e;
}

struct pending *
pipeline_head(const struct pipeline *p)
{
	return TAILQ_FIRST(&p->queue);
}

void
pipeline_pop(struct pipeline *p)
{
	struct pending *e = TAILQ_FIRST(&p->queue);

	if (e == NULL)
		return;
	TAILQ_REMOVE(&p->queue, e, entry);
	p->count--;
	if (e->local_reply == NULL)
		p->remote--;
	free(e->local_reply);
	free(e);
}

void
pipeline_clear(struct pipeline *p)
{
	while (!TAILQ_EMPTY(&p->queue))
		pipeline_pop(p);
}
