/*
 * names.c: validation of volume and snapshot names (see names.h).
 */
#include <errno.h>
#include <string.h>

#include "error.h"
#include "names.h"

static bool
name_char_ok(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-' || c == '+' || c == ':';
}

static int
check_bytes(const char *name, size_t len, const char *what)
{
	if (len == 0)
		return sv_error(EINVAL, "%s name is empty", what);
	if (len > SV_NAME_MAX)
		return sv_error(EINVAL, "%s name is longer than %d bytes", what, SV_NAME_MAX);
	if (name[0] == '.' || name[0] == '-')
		return sv_error(EINVAL, "%s name may not start with '%c'", what, name[0]);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (name_char_ok(c))
			continue;
		if (c == '/')
			return sv_error(EINVAL, "%s name may not contain '/'", what);
		if (c == '@')
			return sv_error(
			    EINVAL,
			    "%s name may not contain '@' (it separates volume and snapshot)", what);
		if (c < 0x20 || c == 0x7f)
			return sv_error(EINVAL, "%s name may not contain control character 0x%02x",
					what, c);
		return sv_error(EINVAL,
				"%s name may not contain '%c' (allowed: letters, digits, '.', '_', "
				"'-', '+', ':')",
				what, c >= 0x80 ? '?' : c);
	}
	return 0;
}

int
sv_check_name(const char *name, const char *what)
{
	return check_bytes(name, strlen(name), what);
}

int
sv_split_export_name(const char *export, size_t len, char *vol, char *snap, bool *has_snap)
{
	if (memchr(export, '\0', len))
		return sv_error(EINVAL, "export name contains a NUL byte");
	const char *at = memchr(export, '@', len);
	size_t vlen = at ? (size_t)(at - export) : len;
	if (check_bytes(export, vlen, "volume") == -1)
		return -1;
	memcpy(vol, export, vlen);
	vol[vlen] = '\0';
	*has_snap = at != NULL;
	snap[0] = '\0';
	if (at) {
		size_t slen = len - vlen - 1;
		if (check_bytes(at + 1, slen, "snapshot") == -1)
			return -1;
		memcpy(snap, at + 1, slen);
		snap[slen] = '\0';
	}
	return 0;
}
