#!/usr/bin/env bash
# Instructions per operation on the issue-14 paths, counted with callgrind,
# printed against the goals in one table (`make bench-instr`).
#
# The harness (kernel/benches/instr.rs) runs each path inside its own
# #[inline(never)] function `measure_<path>`; callgrind collects only inside
# that function (--collect-atstart=no --toggle-collect), so the total
# divided by the number of calls is the instructions of one operation.
# Instruction counts repeat exactly on a busy machine; times do not.
# Prints figures only: nothing is written into the tree.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-2000}

if ! command -v valgrind >/dev/null; then
  echo "valgrind missing: installing it with apt-get" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get install -y valgrind >/dev/null
fi

bin=$(cargo bench -p altinj-kernel --bench instr --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "instr") | .executable' |
  tail -n 1)
[ -x "$bin" ] || { echo "bench-instr: harness did not build" >&2; exit 1; }
"$bin" >/dev/null # every path once, with its checks, natively

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Instructions per call of measure_<function> running <path>.
count() {
  local path=$1 function=$2
  valgrind --tool=callgrind --callgrind-out-file="$out/$path.cg" \
    --collect-atstart=no "--toggle-collect=*measure_$function" \
    "$bin" "$path" "$N" >/dev/null 2>"$out/$path.log" ||
    { cat "$out/$path.log" >&2; exit 1; }
  local total
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out/$path.cg")
  # Nothing collected: the function was inlined or folded into another.
  [ "${total:-0}" -gt 0 ] || { echo "bench-instr: nothing counted in measure_$function" >&2; exit 1; }
  echo $(((total + N / 2) / N))
}

fail=0
row() { # label measured goal
  local verdict=pass
  if [ "$2" -gt "$3" ]; then verdict=FAIL; fail=1; fi
  printf '| %-66s | %8s | %5s | %-4s |\n' "$1" "$2" "$3" "$verdict"
}

printf '| %-66s | %8s | %5s | %-4s |\n' "path (64 vCPUs, x2APIC; instructions per operation)" measured "goal" ""
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..68})" "----------" "-------" "------"
# path | measured function | label | goal (at most)
rows=(
  "before_run|before_run|host vector in the doorbell -> EVENTINJ (whole before_run)|300"
  "eoi|eoi|guest EOI, write 0 to 0x80B, one vector in service|70"
  "eoi_protocol|eoi_protocol|  the same through handle_apic_call|70"
  "icr_1|icr|guest ICR fixed IPI (0xFD) to vCPU 1 (decode, route, post, kick)|150"
  "icr_63|icr|  the same to vCPU 63|150"
  "highest|highest|highest deliverable, full IRR|10"
  "broadcast|icr|broadcast IPI (0xFC, all excluding self) to 63 others|600"
)
for r in "${rows[@]}"; do
  IFS='|' read -r path function label goal <<<"$r"
  measured=$(count "$path" "$function")
  row "$label" "$measured" "$goal"
done
ghcb=$("$bin" ghcb)
verdict=pass
[ "$ghcb" = 1 ] || { verdict=FAIL; fail=1; }
printf '| %-66s | %8s | %5s | %-4s |\n' "GHCB (#HV IPI) calls per broadcast ICR write (63 to wake)" "$ghcb" "1" "$verdict"
echo "(goal: at most; callgrind, $N operations per path; GHCB calls stubbed to a counter)"
exit $fail
