# Shortcuts for the two README commands.
.PHONY: up test
up:
	scripts/up.sh
test:
	scripts/test.sh
