/* cppcheck-defs.h: definitions cppcheck needs to parse snapvol's code without
 * reading system headers (scripts/lint.sh passes it with --include). */
#define json_array_foreach(array, index, value)                                                    \
	for (index = 0; index < json_array_size(array) && (value = json_array_get(array, index));  \
	     index++)
#define json_object_foreach(object, key, value)                                                    \
	for (key = json_object_iter_key(json_object_iter(object)); key && (value = NULL) == NULL;  \
	     key = NULL)
