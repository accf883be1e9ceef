"""The policy pack `pulumi preview --policy-pack policy` loads: mlserve's guardrails, all mandatory."""

from pulumi_policy import PolicyPack

from mlserve_policies import ENFORCEMENT, POLICIES  # run by Pulumi from this folder

PolicyPack(name="mlserve-guardrails", enforcement_level=ENFORCEMENT, policies=POLICIES)
