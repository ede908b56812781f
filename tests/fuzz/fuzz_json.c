/*
 * libFuzzer target: the event line's JSON writer (logs/json.c).  The input is read as a list
 * of values (a type octet, then the value's octets): strings of any octets, integers, reals,
 * booleans, nulls, written into an array inside an object.  The line must be one line of
 * ASCII without control octets, parse with jansson, and give back the same values: each
 * string that is UTF-8 exactly, any other with U+FFFD for its stray octets (checked by
 * length and type only), integers exactly, reals to the 9 digits written.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "logs/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_VALUES 64

struct value {
	int type; /* 0 string, 1 integer, 2 real, 3 boolean, 4 null */
	const uint8_t *s;
	size_t n;
	long long i;
	double r;
};

static void
check_line(const struct json_writer *w)
{
	for (size_t i = 0; i < w->len; i++)
		if ((unsigned char)w->buf[i] < 0x20 || (unsigned char)w->buf[i] >= 0x80)
			abort(); /* one line, ASCII */
}

static void
check_value(const struct value *v, json_t *j)
{
	json_t *utf8;
	char num[40];

	switch (v->type) {
	case 0:
		if (!json_is_string(j))
			abort();
		/* jansson takes the octets only if they are UTF-8: then they must come back. */
		utf8 = json_stringn((const char *)v->s, v->n);
		if (utf8 != NULL && !json_equal(utf8, j))
			abort();
		json_decref(utf8);
		break;
	case 1:
		if (!json_is_integer(j) || json_integer_value(j) != v->i)
			abort();
		break;
	case 2:
		if (!isfinite(v->r)) {
			if (!json_is_null(j))
				abort();
			break;
		}
		snprintf(num, sizeof(num), "%.9g", v->r);
		if (!json_is_real(j) || json_real_value(j) != strtod(num, NULL))
			abort();
		break;
	case 3:
		if (!json_is_boolean(j) || json_is_true(j) != (v->i != 0))
			abort();
		break;
	default:
		if (!json_is_null(j))
			abort();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct json_writer w;
	struct value vals[MAX_VALUES];
	size_t nv = 0, i = 0, n;
	json_error_t err;
	json_t *root, *a;

	while (i < size && nv < MAX_VALUES) {
		struct value *v = &vals[nv++];

		memset(v, 0, sizeof(*v));
		v->type = data[i++] % 5;
		if (v->type == 0) {
			n = i < size ? data[i++] : 0;
			if (n > size - i)
				n = size - i;
			v->s = data + i;
			v->n = n;
			i += n;
		} else if (v->type == 1 || v->type == 2) {
			uint8_t b[8] = {0};

			n = size - i < 8 ? size - i : 8;
			memcpy(b, data + i, n);
			i += n;
			if (v->type == 1)
				memcpy(&v->i, b, 8);
			else
				memcpy(&v->r, b, 8);
		} else if (v->type == 3) {
			v->i = i < size ? data[i++] & 1 : 0;
		}
	}
	jw_reset(&w);
	jw_open(&w, '{');
	jw_key(&w, "values");
	jw_open(&w, '[');
	for (i = 0; i < nv; i++) {
		switch (vals[i].type) {
		case 0:
			jw_strn(&w, (const char *)vals[i].s, vals[i].n);
			break;
		case 1:
			jw_int(&w, vals[i].i);
			break;
		case 2:
			jw_real(&w, vals[i].r);
			break;
		case 3:
			jw_bool(&w, (int)vals[i].i);
			break;
		default:
			jw_null(&w);
		}
	}
	jw_close(&w, ']');
	jw_key(&w, "n");
	jw_int(&w, (long long)nv);
	jw_close(&w, '}');
	if (w.failed)
		return 0;
	check_line(&w);
	if ((root = json_loadb(w.buf, w.len, JSON_ALLOW_NUL, &err)) == NULL)
		abort();
	a = json_object_get(root, "values");
	if (!json_is_array(a) || json_array_size(a) != nv ||
	    json_integer_value(json_object_get(root, "n")) != (json_int_t)nv)
		abort();
	for (i = 0; i < nv; i++)
		check_value(&vals[i], json_array_get(a, i));
	json_decref(root);
	return 0;
}
