# The two commands of README.md, and the maintainers' helpers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup test-deps lint test-calendar migration bench

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

# Debian packages the suite needs, installed when missing: Dovecot for IMAP, libfaketime for the pinned clocks,
# promtool (from the prometheus package) to check docs/monitoring. The prometheus package also ships a server
# that systemd would start: it is stopped and disabled, the tests need only promtool.
test-deps:
	@missing=""; \
	{ command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; } || missing="$$missing dovecot-imapd"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	[ -z "$$missing" ] || { echo "installing$$missing (needs root)"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus for promtool (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  ! command -v systemctl >/dev/null 2>&1 || systemctl disable --now prometheus >/dev/null 2>&1 || true; }

# Sets up and runs the whole test suite (PostgreSQL is expected at 127.0.0.1:5432, database `test`): the
# linters, the time-sensitive tests under pinned wall clocks, then every test.
test: setup test-deps lint test-calendar
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check mailbot tests bench
	$(BIN)/mypy mailbot

# No test may depend on the day it runs. The tests marked `calendar` (business time, deadlines, the real
# daemon on the system clock) run again, side by side, with the wall clock pinned by libfaketime: a Friday
# evening, a Saturday, a configured holiday (Thanksgiving) and the night the clocks fall back (US Eastern).
# FAKETIME_DONT_RESET: a process a test starts (the daemon, its worker processes) goes on from the pinned
# clock of its parent instead of starting again at the pinned instant, so they all share one clock.
CALENDAR := 2026-12-04T22:30:00 2026-12-05T15:00:00 2026-11-26T14:00:00 2026-11-01T05:45:00
test-calendar: setup test-deps
	@rm -rf var/calendar && mkdir -p var/calendar; \
	for at in $(CALENDAR); do \
	  FAKETIME_DONT_RESET=1 faketime -f "@$$(echo $$at | tr T ' ')" $(BIN)/pytest -q -m "calendar and not postgres" -p no:cacheprovider \
	    --basetemp=var/calendar/$$at > var/calendar/$$at.log 2>&1 & pids="$$pids $$!"; \
	done; failed=0; for pid in $$pids; do wait $$pid || failed=1; done; \
	for at in $(CALENDAR); do echo "calendar: wall clock at $$at UTC: $$(tail -n 1 var/calendar/$$at.log)"; done; \
	if [ $$failed != 0 ]; then cat var/calendar/*.log; exit 1; fi

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
# (SQLite, and PostgreSQL at 127.0.0.1:5432 in a private database), the whole `mailbot run` against a null
# handler (SQLite), and the command's start-up time.
bench: setup
	$(BIN)/python bench/listener.py
	$(BIN)/python bench/processing.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/startup.py
