#!/usr/bin/env bash
# Shared by the demo scripts (sourced, not run): where a demo may write.
#
# A demo writes into $OUT. It never deletes a directory it did not make: $OUT must not exist, be
# empty, or hold the marker file that a demo leaves in every directory it makes (then the demo
# empties it and starts again). Anything else is refused with one `error:` line before any work.

DEMO_MARKER=.cryoal-demo

# demo_prepare_out DIR SCRIPT: make DIR ready for SCRIPT (a name for the marker), or exit 1.
demo_prepare_out() {
    local out=$1 script=$2
    if [ -z "$out" ]; then
        echo "error: OUT is empty; name a directory for the demo's files" >&2
        exit 1
    fi
    if [ -e "$out" ] && [ ! -d "$out" ]; then
        echo "error: $out: exists and is not a directory; choose another OUT" >&2
        exit 1
    fi
    if [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
        if [ ! -f "$out/$DEMO_MARKER" ]; then
            echo "error: $out: directory is not empty and was not made by a cryoal demo" \
                "(no $DEMO_MARKER file); choose another OUT or empty it" >&2
            exit 1
        fi
        rm -rf "$out"  # the demo's own directory from an earlier run (it holds the marker)
    fi
    mkdir -p "$out"
    printf 'made by %s; running a demo again with this OUT empties this directory\n' "$script" \
        >"$out/$DEMO_MARKER"
}
