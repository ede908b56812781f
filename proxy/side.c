/*
 * One direction of a session: lines cut from a side's input (capped before they are read),
 * moved unchanged to its peer or discarded, recorded, and the one write point.
 */
#include "proxy/side.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "logs/transcript.h"
#include "smtp/smtp.h"

/* What a side sent and the relay has not dealt with yet. */
struct evbuffer *
side_input(struct side *x)
{
	side_commit(x);
	return x->in;
}

/*
 * Finds the next line in a side's input, capped at --max-line before it is read: returns 1
 * with a line or a max-line piece, 0 when more input is needed.  A piece never ends in the
 * CR of a CRLF (PITFALLS 15): that CR starts the next unit, so the line end is seen whole.
 */
int
side_next_unit(struct side *x, size_t max, struct unit *u)
{
	struct smtp_line l;

	/* Units relayed but not yet moved stay at the head: the next one starts after them. */
	if (!smtp_line_next(x->in, x->relayed, max, &x->scanned, &l))
		return 0;
	u->data = l.data;
	u->len = l.len;
	u->complete = l.complete;
	return 1;
}

/*
 * Message lines relayed unchanged are moved to the peer together, once the relay stops
 * for input or meets a line it must treat otherwise: one evbuffer move (and its callbacks)
 * per read instead of one per line.
 */
void
side_forward_later(struct side *x, size_t len)
{
	if (x->relayed_drop)
		side_commit(x);
	x->octets += len;
	x->relayed += len;
}

void
side_discard_later(struct side *x, size_t len)
{
	if (x->relayed > 0 && !x->relayed_drop)
		side_commit(x);
	x->relayed_drop = 1;
	x->octets += len;
	x->relayed += len;
}

void
side_commit(struct side *x)
{
	struct side *peer = x->peer;
	size_t len = x->relayed;
	int drop = x->relayed_drop;

	x->relayed = 0;
	x->relayed_drop = 0;
	if (len == 0 || x->bev == NULL)
		return;
	if (drop || peer == NULL || peer->bev == NULL)
		evbuffer_drain(x->in, len);
	else
		evbuffer_remove_buffer(x->in, peer->out, len);
}

/* Moves the unit to the peer, unchanged, and counts it. */
void
side_forward(struct side *x, size_t len)
{
	struct side *peer = x->peer;

	x->octets += len;
	if (peer == NULL || peer->bev == NULL) {
		evbuffer_drain(side_input(x), len);
		return;
	}
	evbuffer_remove_buffer(side_input(x), peer->out, len);
}

void
side_discard(struct side *x, size_t len)
{
	x->octets += len;
	evbuffer_drain(side_input(x), len);
}

/*
 * The one write point: octets onto a side's output, on their way to it, recorded as kind
 * ("P:" a reply of the proxy's own, "U:" a line of its own upstream), or with kind NULL not
 * again (what was recorded as it came in, "C:"/"S:", in the form it goes out).  Nothing goes
 * to a side already closed, nor is recorded as if it had.
 */
void
side_write(struct side *to, const void *p, size_t len, const char *kind)
{
	if (to->bev == NULL)
		return;
	evbuffer_add(to->out, p, len);
	if (kind != NULL)
		transcript_data(to->transcript, kind, p, len);
}

/* All of buf onto a side's output (moved, not copied: file segments stay so), unrecorded. */
void
side_write_buffer(struct side *to, struct evbuffer *buf)
{
	if (to->bev == NULL) {
		evbuffer_drain(buf, evbuffer_get_length(buf));
		return;
	}
	evbuffer_add_buffer(to->out, buf);
}

/* Records a unit, as "C:"/"S:" or, for a later piece of a long line, "C+"/"S+". */
void
side_record(struct side *x, const struct unit *u)
{
	const char *kind;

	if (x->dir == SIDE_CLIENT)
		kind = x->in_piece ? "C+" : "C:";
	else
		kind = x->in_piece ? "S+" : "S:";
	transcript_data(x->transcript, kind, u->data, u->len);
	x->in_piece = !u->complete;
}
