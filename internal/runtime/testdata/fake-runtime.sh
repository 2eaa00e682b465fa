#!/bin/sh
# fake-runtime.sh stands in for an OCI runtime in the log tests. It fails
# every command: it appends $FAKE_RUNTIME_LOG (when set) as one line to the
# file named by --log, prints $FAKE_RUNTIME_STDERR (when set) on stderr and
# exits 1. With $FAKE_RUNTIME_SLEEP set it sleeps that long instead (a
# runtime that hangs). With $FAKE_RUNTIME_SLEEP_CHILD set it runs sleep as
# its child instead, which keeps the command's output open (a hung helper
# of a runtime).
log=
while [ $# -gt 0 ]; do
	case "$1" in
	--log)
		log=$2
		shift 2
		;;
	*)
		shift
		;;
	esac
done
if [ -n "$FAKE_RUNTIME_SLEEP_CHILD" ]; then
	sleep "$FAKE_RUNTIME_SLEEP_CHILD"
	exit 1
fi
if [ -n "$FAKE_RUNTIME_SLEEP" ]; then
	exec sleep "$FAKE_RUNTIME_SLEEP"
fi
if [ -n "$log" ] && [ -n "$FAKE_RUNTIME_LOG" ]; then
	printf '%s\n' "$FAKE_RUNTIME_LOG" >>"$log"
fi
if [ -n "$FAKE_RUNTIME_STDERR" ]; then
	printf '%s\n' "$FAKE_RUNTIME_STDERR" >&2
fi
exit 1
