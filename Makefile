# Thin front for meson, so "make" and "make check" do what people expect.
# The two commands of the README:
#   make demo    install what is missing, build, serve a demo volume (./data)
#   make check   install what is missing, build, run the whole test suite
BUILD ?= build

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD)/build.ninja:
	bash scripts/setup-deps.sh
	meson setup $(BUILD)

demo:
	bash scripts/demo.sh

check:
	bash scripts/test.sh

asan:
	SNAPVOL_TEST_BUILDS=asan bash scripts/test.sh

tsan:
	SNAPVOL_TEST_BUILDS=tsan bash scripts/test.sh

lint:
	bash scripts/lint.sh

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

bench: all
	bash bench/nbd-matrix.sh

clean:
	rm -rf $(BUILD) build-test-*

.PHONY: all demo check asan tsan lint format bench clean
