#!/usr/bin/env bash
# Appends `python -m rollout plan`'s Markdown to the pull-request comment pulumi/actions wrote for a stack.
# pulumi/actions (comment-on-pr, edit-pr-comment) finds its comment by its heading and rewrites the whole
# body on every push; this puts the plan after the preview again, so each stack keeps one comment holding
# both. Usage: append-plan.sh STACK PLAN.md   (needs GH_TOKEN, GITHUB_REPOSITORY, PR_NUMBER; gh and jq)
set -euo pipefail
stack=$1 plan_file=$2
project=$(sed -n 's/^name: *//p' Pulumi.yaml)
# The heading pulumi/actions v7 writes (src/libs/pr.ts: "#### :tropical_drink: `COMMAND` on PROJECT/STACK").
heading="#### :tropical_drink: \`preview\` on ${project}/${stack}"
marker="<!-- mlserve-plan -->"
comment=$(gh api --paginate "repos/${GITHUB_REPOSITORY}/issues/${PR_NUMBER}/comments" \
  | jq -c --arg heading "$heading" '[.[] | select(.body | startswith($heading))] | last')
if [ -z "$comment" ] || [ "$comment" = "null" ]; then
  echo "no pulumi preview comment for ${project}/${stack} on pull request #${PR_NUMBER}" >&2
  exit 1
fi
id=$(jq -r '.id' <<<"$comment")
preview=$(jq -r '.body' <<<"$comment" | awk -v marker="$marker" '$0 == marker {exit} {print}')
body=$(printf '%s\n%s\n\n%s\n' "$preview" "$marker" "$(cat "$plan_file")")
jq -n --arg body "$body" '{body: $body}' \
  | gh api --method PATCH "repos/${GITHUB_REPOSITORY}/issues/comments/${id}" --input - >/dev/null
echo "plan for ${stack} added to comment ${id}"
