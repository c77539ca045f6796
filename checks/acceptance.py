#!/usr/bin/env python3
"""Acceptance checks of the staging canary, run by `phasegate collect` as [[checks]] probes.

  fail-closed   the seed's "fail-closed: 503 when off, 200 when on": /list must answer 200 while
                FAULT_LENS_V1_ENABLED is on, and 503 FEATURE_DISABLED while it is off
  signed-flow   the seed's signed-flow acceptance: the SIGNED create_work_order_from_fault is
                listed, and never suggested

The target is $PHASEGATE_BASE_URL (set by phasegate); the token, if the profile passes it, is
$FAULT_LENS_API_TOKEN. Standard library only, so any python3 runs it. Exit 0: holds; 1: does not
(the last lines printed say why); 2: could not check.
"""

import json
import os
import sys
import urllib.error
import urllib.request

SIGNED = "create_work_order_from_fault"


def get(path: str):
    req = urllib.request.Request(os.environ["PHASEGATE_BASE_URL"].rstrip("/") + path)
    token = os.environ.get("FAULT_LENS_API_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, None


def fail_closed() -> bool:
    _, health = get("/v1/actions/health")
    on = bool((health or {}).get("feature_flags", {}).get("FAULT_LENS_V1_ENABLED"))
    status, body = get("/v1/actions/list?domain=faults")
    code = ((body or {}).get("error") or {}).get("code")
    print(f"FAULT_LENS_V1_ENABLED={str(on).lower()}: /v1/actions/list answered {status}" + (f" {code}" if code else ""))
    if on:
        return status == 200
    return status == 503 and code == "FEATURE_DISABLED"


def signed_flow() -> bool:
    s1, listed = get("/v1/actions/list?domain=faults")
    s2, suggested = get("/v1/actions/suggestions?domain=faults")
    in_list = SIGNED in [a.get("action_id") for a in (listed or {}).get("actions", [])]
    in_suggestions = SIGNED in [a.get("action_id") for a in (suggested or {}).get("actions", [])]
    print(f"list {s1}: {SIGNED} {'listed' if in_list else 'MISSING'}; "
          f"suggestions {s2}: {'LEAKED' if in_suggestions else 'not suggested'}")
    return s1 == 200 and s2 == 200 and in_list and not in_suggestions


if __name__ == "__main__":
    checks = {"fail-closed": fail_closed, "signed-flow": signed_flow}
    if len(sys.argv) != 2 or sys.argv[1] not in checks or "PHASEGATE_BASE_URL" not in os.environ:
        print(f"usage: PHASEGATE_BASE_URL=... {sys.argv[0]} {{{','.join(checks)}}}", file=sys.stderr)
        sys.exit(2)
    try:
        ok = checks[sys.argv[1]]()
    except (OSError, ValueError) as exc:
        print(f"could not check: {exc}")
        sys.exit(2)
    print("holds" if ok else "DOES NOT HOLD")
    sys.exit(0 if ok else 1)
