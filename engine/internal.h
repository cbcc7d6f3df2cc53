/*
 * internal.h: what the engine's files share and nobody else sees.
 *
 * Lock order (take them in this order, never the reverse):
 *   pool->lock  ->  (later) volume locks  ->  (later) chunk locks
 */
#ifndef SV_ENGINE_INTERNAL_H
#define SV_ENGINE_INTERNAL_H

#include <jansson.h>
#include <pthread.h>

#include "engine.h"

struct sv_volume {
	struct sv_pool *pool;
	char name[SV_NAME_MAX + 1];
	uint64_t size;
	uint32_t chunk_size;
	uint64_t created;
	struct sv_obj *origin; /* the live data */
	const struct sv_store_ops *ops;
	unsigned refs;		/* open views; protected by pool->lock */
	struct sv_volume *next; /* pool->open list; protected by pool->lock */
};

struct sv_pool {
	struct sv_store *st;
	const struct sv_store_ops *ops;
	/* Protects the list of open volumes and serialises create/delete
	 * against opening views, so a volume is never deleted under a client. */
	pthread_mutex_t lock;
	struct sv_volume *open;
};

/* meta.c: checksummed, versioned JSON blobs */
#define SV_META_VOLUME "volume.meta"
int sv_meta_encode(json_t *body, char **buf, size_t *len);
int sv_meta_decode(const char *buf, size_t len, json_t **body);
int sv_meta_load(struct sv_pool *pool, const char *vol, const char *key, json_t **body);
int sv_meta_store(struct sv_pool *pool, const char *vol, const char *key, json_t *body);

/* volume.c */
struct sv_volume_meta {
	uint64_t size;
	uint32_t chunk_size;
	uint64_t created;
};
int sv_volume_meta_parse(json_t *body, const char *name, struct sv_volume_meta *m);
/* Open (or find open) a volume and take a reference; pool->lock held. */
int sv_volume_get_locked(struct sv_pool *pool, const char *name, struct sv_volume **out);
void sv_volume_put_locked(struct sv_volume *vol);

#endif
