# Demo and development shortcuts. `make demo` installs and runs one replica; run it in several
# terminals (or `make demo-parallel`) to watch the election and the failover.
PYTHON ?= python3
TMUX_BIN ?= tmux
SESSION ?= singleton-jobs-demo
DEMO_ARGS ?=
DEMO := $(PYTHON) -m singleton_jobs demo $(DEMO_ARGS)

.PHONY: install demo run demo-parallel kill-demo tmux-check test lint type bench chaos

install:
	$(PYTHON) -m pip install -q -e ".[apscheduler]"

demo: install run

run:
	$(DEMO)

tmux-check:
	@command -v $(TMUX_BIN) >/dev/null 2>&1 || { \
	  echo "tmux is not installed: install it (apt-get install tmux, brew install tmux)"; \
	  echo "or run 'make run' in three terminals instead."; exit 1; }

demo-parallel: tmux-check install
	@if $(TMUX_BIN) has-session -t $(SESSION) 2>/dev/null; then \
	  $(TMUX_BIN) kill-session -t $(SESSION); fi
	$(TMUX_BIN) new-session -d -s $(SESSION) -x 160 -y 48 '$(DEMO)'
	$(TMUX_BIN) set-option -t $(SESSION) remain-on-exit on
	$(TMUX_BIN) split-window -t $(SESSION) '$(DEMO)'
	$(TMUX_BIN) split-window -t $(SESSION) '$(DEMO)'
	$(TMUX_BIN) select-layout -t $(SESSION) even-vertical
	@if [ -t 1 ]; then $(TMUX_BIN) attach -t $(SESSION); \
	else echo "three replicas run in tmux session $(SESSION): tmux attach -t $(SESSION)"; fi

# Ctrl+C to each demo replica (so each releases the lease), then close the tmux session. The
# pattern is anchored at the start of the command line: it matches the replicas' Python
# processes, never this shell, make or the tmux server.
kill-demo:
	@pids=$$(pgrep -f '^$(PYTHON) -m singleton_jobs demo'); \
	if [ -n "$$pids" ]; then \
	  kill -INT $$pids; \
	  for _ in 1 2 3 4 5 6 7 8 9 10; do \
	    pgrep -f '^$(PYTHON) -m singleton_jobs demo' >/dev/null || break; sleep 0.5; done; \
	fi
	@if command -v $(TMUX_BIN) >/dev/null 2>&1 && \
	  $(TMUX_BIN) has-session -t $(SESSION) 2>/dev/null; then \
	  $(TMUX_BIN) kill-session -t $(SESSION); fi
	@echo "demo stopped"

test:
	$(PYTHON) -m pip install -q -e ".[test]"
	$(PYTHON) -m pytest

lint:
	ruff check singleton_jobs tests examples benchmarks

type:
	mypy --strict singleton_jobs

bench:
	$(PYTHON) benchmarks/leader_only_overhead.py
	$(PYTHON) benchmarks/failover.py
	$(PYTHON) benchmarks/import_time.py
	$(PYTHON) benchmarks/k8s_requests.py
	$(PYTHON) benchmarks/backend_requests.py
	$(PYTHON) benchmarks/failover.py --backend all
	$(PYTHON) benchmarks/scale.py

# Ten minutes of faults against five replicas; prints the table quoted in the README.
chaos:
	$(PYTHON) benchmarks/chaos.py --duration 600 --fault-every 0.25 --lease-duration 0.5 \
	  --renew-deadline 0.25 --retry-period 0.05 --seed 1128
