"""mlserve's Pulumi program: typed stack config, pure manifest builders, and one component per module."""
