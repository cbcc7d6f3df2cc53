/*
 * ctl-private.h: what the files of ctl/ share and nobody else needs: the
 * shape of replies and the protocol's limits.  The public contract is
 * ctl.h; this header only keeps the three files from repeating each other.
 */
#ifndef SV_CTL_PRIVATE_H
#define SV_CTL_PRIVATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Version of the wire protocol, sent in the greeting.  Bumped only when an
 * old client would misread a new server; new commands do not bump it. */
#define SV_CTL_PROTOCOL 1

/* Longest request line, newline excluded.  Longer: error reply, disconnect. */
#define SV_CTL_LINE_MAX (1024u * 1024u)

/* Largest reply a client accepts (a listing of many volumes is big). */
#define SV_CTL_REPLY_MAX (64u * 1024u * 1024u)

/* Seconds a client waits for the greeting before it calls the server dead. */
#define SV_CTL_GREETING_TIMEOUT_S 5

/* {"error": {"class": cls, "errno": errnum, "desc": desc}}.  cls NULL means
 * the errno's name ("EINVAL"). */
json_t *sv_ctl_error_reply(const char *cls, int errnum, const char *desc);

/* The name of an errno value ("ENOENT"), or "GenericError". */
const char *sv_ctl_errno_class(int errnum);

/* A control connection (ctl-server.c): who is on the other end, and what it
 * holds.  Used only by that connection's thread. */
struct sv_ctl_session {
	int pid; /* SO_PEERCRED; 0 if unknown */
	unsigned uid;
	uint64_t *freezes; /* ids of freezes taken on this connection */
	size_t n_freezes, cap_freezes;
	int fd; /* the connection: events are sent on it */
};
/* Send {"event": name, "data": data} on the session's connection now, ahead
 * of the running command's reply (only that connection's thread calls it);
 * takes data's reference.  -1 if the client is gone. */
int sv_ctl_session_event(struct sv_ctl_session *s, const char *name, json_t *data);
/* Remember a freeze to end when the connection closes; -1 on ENOMEM. */
int sv_ctl_session_hold_freeze(struct sv_ctl_session *s, uint64_t id);

#endif
