# The two commands of README.md, and the maintainers' helpers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup test-deps migration bench

$(BIN)/mailbot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/mailbot

# Sets up and runs the daemon on the shipped config.toml (SQLite in var/, listener on 127.0.0.1:2525,
# outgoing mail written to var/sent/new/).
run: setup
	$(BIN)/mailbot --config config.toml db upgrade
	$(BIN)/mailbot --config config.toml run

# Debian packages the suite's real servers need (Dovecot for IMAP); installed when missing.
test-deps:
	@command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || { \
	  echo "installing dovecot-imapd (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; }

# Sets up and runs the whole test suite (PostgreSQL is expected at 127.0.0.1:5432, database `test`).
test: setup test-deps
	$(BIN)/pytest -q

# Before the first release only: regenerate the initial migration from the models.
migration: setup
	rm -f mailbot/migrations/versions/0001_initial.py var/alembic-dev.db
	mkdir -p var
	$(BIN)/python -c "from alembic.config import Config; from alembic import command; \
c = Config(); c.set_main_option('script_location', 'mailbot/migrations'); \
command.revision(c, message='initial schema', autogenerate=True, rev_id='0001')"
	mv mailbot/migrations/versions/0001_initial_schema.py mailbot/migrations/versions/0001_initial.py
	rm -f var/alembic-dev.db

# The benchmarks of bench/RESULTS.md: the listener against a null SMTP handler, then the intake runner
# (SQLite, and PostgreSQL at 127.0.0.1:5432 in a private database), and the command's start-up time.
bench: setup
	$(BIN)/python bench/listener.py
	$(BIN)/python bench/processing.py
	$(BIN)/python bench/startup.py
