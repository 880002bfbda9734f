#!/usr/bin/env bash
# allround-ckpt on damaged and pruned stores, as an operator runs it (issue 29, defect 7 and the
# CLI around it): a store whose MANIFEST is cut in half is refused by ls, verify and prune, with
# the MANIFEST named and no file deleted; `repair` keeps the store as it was aside and salvages
# every checkpoint; `prune --keep 1` without --run prunes every run (it pruned only the run
# 'imported').
# Usage: ckpt_cli_test.sh CHECKPOINT_STRESS_WRITER ALLROUND_CKPT
set -u
WRITER="$1" CKPT="$2"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
check() { if eval "$2"; then echo "ok   $1"; passed=$((passed+1)); else echo "FAIL $1"; failed=$((failed+1)); fi; }
DB="$TMP/db"
"$WRITER" "$DB" 5 > /dev/null 2>&1 || { echo "FAIL: the writer could not make a store"; echo "0 passed, 1 failed"; exit 1; }
"$CKPT" ls "$DB" | tail -n +2 | awk '{print $1}' > "$TMP/ids"
n=$(wc -l < "$TMP/ids")
check "the writer left checkpoints ($n)" '[[ $n -ge 2 ]]'
cp -a "$DB" "$TMP/pristine"

manifest=$(ls "$DB"/MANIFEST-* | head -1)
truncate -s $(( $(stat -c %s "$manifest") / 2 )) "$manifest"
(cd "$DB" && find . -type f -printf '%p %s\n' | sort) > "$TMP/before"
for cmd in ls verify "prune --keep 1"; do
  "$CKPT" $cmd "$DB" > "$TMP/out" 2>&1; rc=$?
  check "'$cmd' on a store whose MANIFEST is cut in half fails, naming the MANIFEST and repair" \
    '[[ $rc -ne 0 ]] && grep -q "MANIFEST-" "$TMP/out" && grep -q "allround-ckpt repair" "$TMP/out"'
done
"$WRITER" "$DB" 1 > "$TMP/out" 2>&1; rc=$?
check "a writer (as --resume auto or a fresh run opens it) refuses it too" '[[ $rc -ne 0 ]] && grep -q "MANIFEST-" "$TMP/out"'
(cd "$DB" && find . -type f -printf '%p %s\n' | sort) > "$TMP/after"
check "nothing in the store changed or was deleted" 'cmp -s "$TMP/before" "$TMP/after"'

"$CKPT" repair "$DB" > "$TMP/repair" 2>&1; rc=$?
cat "$TMP/repair"
check "repair exits 0 and keeps every checkpoint" \
  '[[ $rc -eq 0 ]] && grep -q "repaired .*: $n kept, 0 damaged, 0 lost" "$TMP/repair"'
backup=$(ls -d "$DB".before-repair-* 2>/dev/null | head -1)
check "the store as it was is kept aside, untouched" \
  '[[ -n $backup ]] && (cd "$backup" && find . -type f -printf "%p %s\n" | sort) | cmp -s - "$TMP/before"'
"$CKPT" verify "$DB" > "$TMP/verify" 2>&1; rc=$?
check "the repaired store verifies: every tensor's checksum" '[[ $rc -eq 0 ]] && grep -q "^$n checkpoint(s) verified, 0 bad" "$TMP/verify"'
"$CKPT" ls "$DB" | tail -n +2 | awk '{print $1}' > "$TMP/ids_after"
check "the same ids as before the damage" 'cmp -s "$TMP/ids" "$TMP/ids_after"'
last=$(tail -1 "$TMP/ids")
"$CKPT" diff "$DB" "$last" "$last" --db-b "$TMP/pristine" > "$TMP/diff" 2>&1
check "the latest checkpoint's tensors equal the undamaged store's" 'grep -q "max_abs_diff=0 tensors_not_comparable=0" "$TMP/diff"'

"$CKPT" prune "$DB" --keep 1 > "$TMP/prune" 2>&1; rc=$?
check "prune --keep 1 without --run prunes the run's older checkpoints" \
  '[[ $rc -eq 0 ]] && [[ $(grep -c "^deleted " "$TMP/prune") -eq $((n - 1)) ]]'
"$WRITER" "$DB" 1 > /dev/null 2>&1; rc=$?
check "the repaired store takes new checkpoints" '[[ $rc -eq 0 ]]'
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
