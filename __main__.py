"""mlserve's Pulumi program: load the stack config, build the components, export the outputs."""

from infra.program import run_program

run_program()
