#!/bin/sh
# record-runtime.sh stands in for an OCI runtime in the argument tests: it
# appends its arguments, one line per call, to $RECORD_RUNTIME_ARGS, reads
# stdin (update's resources) into $RECORD_RUNTIME_ARGS.stdin, writes its own
# pid to --pid-file when given, and succeeds.
printf '%s\n' "$*" >>"$RECORD_RUNTIME_ARGS"
pidfile=
prev=
for a in "$@"; do
	[ "$prev" = "--pid-file" ] && pidfile=$a
	prev=$a
done
case " $* " in
*" update "*) cat >"$RECORD_RUNTIME_ARGS.stdin" ;;
esac
[ -n "$pidfile" ] && echo $$ >"$pidfile"
exit 0
