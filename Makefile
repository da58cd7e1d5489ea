# fieldprint developer entry points. `make test` and `make demo` are the whole setup on a fresh
# Debian 12 machine: they install packages, configure, build (with ccache) and run.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# ccache hits across clones and build folders: paths under the source tree hash as relative.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true

.PHONY: deps configure build test demo format clean

deps:
	@./.ci/deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

demo: build
	@$(BUILD)/fieldprint demo

format:
	@git ls-files --cached --others --exclude-standard -- '*.h' '*.cc' '*.cu' '*.cuh' '*.proto' | xargs -r clang-format -i

clean:
	@rm -rf $(BUILD)
