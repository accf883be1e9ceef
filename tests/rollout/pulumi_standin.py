"""A recording stand-in for the `pulumi` executable (copied onto PATH as `pulumi` by the tests).

It appends its argv (JSON, one line per call) to $PULUMI_STANDIN_LOG and keeps stack config in the
JSON file $PULUMI_STANDIN_STATE, answering the commands the Automation API runs the way the real CLI
does: `version`, `stack select`, `config get/set/rm --path`, `up`, `stack output`, `stack history`.
"""

import json
import os
import sys

args = sys.argv[1:]
with open(os.environ["PULUMI_STANDIN_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
state_path = os.environ["PULUMI_STANDIN_STATE"]
with open(state_path) as handle:
    state = json.load(handle)
words = [arg for arg in args if arg != "--non-interactive"]


def option(name):
    return words[words.index(name) + 1]


def save():
    with open(state_path, "w") as handle:
        json.dump(state, handle)


if words[:1] == ["version"]:
    print("v3.272.0")
elif words[:2] == ["stack", "select"]:
    if option("--stack") not in state["stacks"]:
        sys.stderr.write(f"error: no stack named '{option('--stack')}' found\n")
        sys.exit(255)
elif words[:2] == ["config", "get"]:
    key = [w for w in words[2:] if not w.startswith("--")][0]
    config = state["stacks"][option("--stack")]
    if key not in config:
        sys.stderr.write(f"error: configuration key '{key}' not found for stack '{option('--stack')}'\n")
        sys.exit(255)
    print(json.dumps({"value": config[key], "secret": False}))
elif words[:2] == ["config", "set"]:
    key = words[words.index("--path") + 1] if "--path" in words else words[2]
    state["stacks"][option("--stack")][key] = words[words.index("--") + 1]
    save()
elif words[:2] == ["config", "rm"]:
    state["stacks"][option("--stack")].pop(words[2], None)
    save()
elif words[:1] == ["up"]:
    if state.get("fail_up"):
        sys.stderr.write("error: update failed: the cluster is unreachable\n")
        sys.exit(255)
    state["updates"] = state.get("updates", 0) + 1
    save()
    print("Updating (prod)\n\nResources:\n    3 unchanged\n\nDuration: 1s")
elif words[:2] == ["stack", "output"]:
    print("{}")
elif words[:2] == ["stack", "history"]:
    print(json.dumps([{
        "kind": "update", "startTime": "2026-11-21T06:00:00.000Z", "endTime": "2026-11-21T06:00:01.000Z",
        "message": "", "environment": {}, "config": {}, "result": "succeeded", "version": state.get("updates", 0),
    }]))
else:
    sys.stderr.write(f"stand-in: unexpected command {words}\n")
    sys.exit(2)
