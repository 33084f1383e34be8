/* backend.c: scheme -> backend lookup and the LIST entry array shared by backends. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

const struct backend_ops *backend_for(const struct uri *u, struct err *e)
{
	switch (u->scheme) {
	case URI_FILE: return &backend_file_ops;
	case URI_DIRECT: return &backend_direct_ops;
	case URI_S3: return &backend_s3_ops;
	case URI_AZ: return &backend_az_ops;
	case URI_GS: return &backend_gs_ops;
	default:
		err_set(e, WIRE_E_UNSUPPORTED, "%s: the %s backend is not available in this server",
		        u->text, u->scheme_name);
		return NULL;
	}
}

void backend_list_free(struct backend_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].uri);
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

int backend_list_add(struct backend_list *l, const char *uri, uint64_t size, int64_t mtime_ns,
                     int is_prefix)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct backend_entry *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -1;
		l->v = v;
		l->cap = cap;
	}
	char *copy = strdup(uri);
	if (!copy)
		return -1;
	l->v[l->n++] = (struct backend_entry){copy, size, mtime_ns, is_prefix};
	return 0;
}

static int backend_entry_cmp(const void *a, const void *b)
{
	const struct backend_entry *x = a, *y = b;
	return strcmp(x->uri, y->uri);
}

void backend_list_sort(struct backend_list *l)
{
	if (l->n > 1)
		qsort(l->v, l->n, sizeof(l->v[0]), backend_entry_cmp);
}
