/*
 * test-util.c: unit tests for common/: size and duration parsing, name
 * validation, export-name splitting, the per-thread last error.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "error.h"
#include "names.h"
#include "util.h"

static void
test_parse_size(void **state)
{
	(void)state;
	uint64_t v;
	assert_int_equal(sv_parse_size("512", &v), 0);
	assert_int_equal(v, 512);
	assert_int_equal(sv_parse_size("4K", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(sv_parse_size("4KiB", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(sv_parse_size("20G", &v), 0);
	assert_int_equal(v, 20ull << 30);
	assert_int_equal(sv_parse_size("1t", &v), 0);
	assert_int_equal(v, 1ull << 40);
	assert_int_equal(sv_parse_size("7B", &v), 0);
	assert_int_equal(v, 7);
	const char *bad[] = {"",    "abc",  "12X", "-1",   "1.5G",
			     "4 K", "4KB2", "G",   "0x10", "99999999999999999999",
			     "16E", NULL};
	for (int i = 0; bad[i]; i++) {
		sv_clear_error();
		assert_int_equal(sv_parse_size(bad[i], &v), -1);
		assert_true(sv_last_errno() == EINVAL || sv_last_errno() == ERANGE);
		assert_non_null(strstr(sv_last_error(), "size"));
	}
}

static void
test_parse_duration(void **state)
{
	(void)state;
	uint64_t ns;
	assert_int_equal(sv_parse_duration("5", &ns), 0);
	assert_int_equal(ns, 5000000000ull);
	assert_int_equal(sv_parse_duration("500ms", &ns), 0);
	assert_int_equal(ns, 500000000ull);
	assert_int_equal(sv_parse_duration("2m", &ns), 0);
	assert_int_equal(ns, 120000000000ull);
	assert_int_equal(sv_parse_duration("1h", &ns), 0);
	assert_int_equal(ns, 3600000000000ull);
	assert_int_equal(sv_parse_duration("2d", &ns), 0);
	assert_int_equal(ns, 2 * 86400000000000ull);
	assert_int_equal(sv_parse_duration("1y", &ns), 0);
	assert_int_equal(ns, 365 * 86400000000000ull);
	assert_int_equal(sv_parse_duration("5x", &ns), -1);
	assert_int_equal(sv_parse_duration("", &ns), -1);
	assert_int_equal(sv_parse_duration("-5s", &ns), -1);
	assert_int_equal(sv_parse_duration("99999999999999999999h", &ns), -1);
}

static void
test_names(void **state)
{
	(void)state;
	const char *good[] = {"vm1", "a", "db-1.prod", "x_y+z:w", "A0", NULL};
	for (int i = 0; good[i]; i++)
		assert_int_equal(sv_check_name(good[i], "volume"), 0);
	struct {
		const char *name, *expect;
	} bad[] = {
	    {"", "empty"},
	    {"a/b", "'/'"},
	    {"..", "start with '.'"},
	    {".hidden", "start with '.'"},
	    {"-rf", "start with '-'"},
	    {"x@y", "'@'"},
	    {"tab\there", "control character 0x09"},
	    {"sp ace", "' '"},
	    {"caf\xc3\xa9", "'?'"},
	    {"0123456789012345678901234567890123456789012345678901234567890123456789",
	     "longer than 64"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(sv_check_name(bad[i].name, "volume"), -1);
		assert_int_equal(sv_last_errno(), EINVAL);
		if (!strstr(sv_last_error(), bad[i].expect))
			fail_msg("name '%s': message '%s' lacks '%s'", bad[i].name, sv_last_error(),
				 bad[i].expect);
	}
}

static void
test_split_export(void **state)
{
	(void)state;
	char vol[SV_NAME_MAX + 1], snap[SV_NAME_MAX + 1];
	bool has;
	assert_int_equal(sv_split_export_name("vm1", 3, vol, snap, &has), 0);
	assert_string_equal(vol, "vm1");
	assert_false(has);
	assert_int_equal(sv_split_export_name("vm1@nightly", 11, vol, snap, &has), 0);
	assert_string_equal(vol, "vm1");
	assert_string_equal(snap, "nightly");
	assert_true(has);
	assert_int_equal(sv_split_export_name("vm1@", 4, vol, snap, &has), -1);
	assert_int_equal(sv_split_export_name("@x", 2, vol, snap, &has), -1);
	assert_int_equal(sv_split_export_name("a@b@c", 5, vol, snap, &has), -1);
	assert_int_equal(sv_split_export_name("a\0b", 3, vol, snap, &has), -1);
	assert_int_equal(sv_split_export_name("../etc", 6, vol, snap, &has), -1);
	assert_int_equal(sv_split_export_name("", 0, vol, snap, &has), -1);
}

static void
test_error_prefix(void **state)
{
	(void)state;
	sv_error(ENOENT, "no such thing");
	sv_error_prefix("volume %s", "vm1");
	assert_string_equal(sv_last_error(), "volume vm1: no such thing");
	assert_int_equal(sv_last_errno(), ENOENT);
	/* a prefix that overflows is cut, not overrun */
	char big[2000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	sv_error(EIO, "%s", big);
	sv_error_prefix("p");
	assert_true(strlen(sv_last_error()) < 1024);
	assert_memory_equal(sv_last_error(), "p: xxx", 6);
}

static void
test_format_size(void **state)
{
	(void)state;
	char b[32];
	assert_string_equal(sv_format_size(123, b, sizeof b), "123 B");
	assert_string_equal(sv_format_size(4096, b, sizeof b), "4 KiB");
	assert_string_equal(sv_format_size(20ull << 30, b, sizeof b), "20 GiB");
	assert_string_equal(sv_format_size(1536, b, sizeof b), "1.5 KiB");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_size),	 cmocka_unit_test(test_parse_duration),
	    cmocka_unit_test(test_names),	 cmocka_unit_test(test_split_export),
	    cmocka_unit_test(test_error_prefix), cmocka_unit_test(test_format_size),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
