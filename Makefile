# The two set-up commands of the README, plus developer conveniences.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: demo test test-slow lint install install-test browser default-model

install:
	$(PIP) install -q -e .

# torchscale 0.3.0, the reference BEiT-3 of the parity test (tests only), pins old timm and
# fairscale: the test extra has versions that work, and torchscale is installed without its pins.
install-test:
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps torchscale==0.3.0

# Debian's chromium for the end-to-end browser test (Playwright's own download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser test"; fi; }

# Launch the grounding demo on the shipped default model (http://127.0.0.1:7860).
demo: install
	$(PYTHON) app.py

# The test suite CI runs (slow tests are excluded; see `make test-slow`).
test: install-test browser
	$(PYTHON) -m pytest -q

# The slow tests (about 15 minutes on 2 CPU cores): the shipped model's accuracy on full-size
# fresh SynthRef splits, and the teacher recipe's first 500 steps reaching its accuracy.
test-slow: install-test
	$(PYTHON) -m pytest -q -m slow

lint: install-test
	$(PYTHON) -m ruff check simvg distill tests bench app.py

# Rebuild the shipped default model (simvg/weights/synthref-student) from nothing: SynthRef and
# SynthRef-G, the teacher, the distilled student (the study's most accurate variant,
# `teacher_stem`), its deployed branch, that student fine-tuned on SynthRef-G to answer with a
# set of boxes (none, one or several), float16 export. About 40 minutes on 2 CPU cores. The runs
# go to $(RUNS)/teacher, $(RUNS)/student/teacher_stem and $(RUNS)/student_g, which must not hold
# a run yet.
DATA ?= data
RUNS ?= runs
default-model: install
	simvg synth --out $(DATA) --name synthref --train 10000 --val 1000 --testA 1000 --testB 1000 --seed 0 --image-size 256
	simvg synth --generalized --out $(DATA) --name synthref-g --train 10000 --val 1000 --testA 1000 --testB 1000 --seed 0 --image-size 256
	simvg train configs/synthref_hybrid.yaml --data-root $(DATA) --output $(RUNS)/teacher
	simvg distill configs/distill_synthref.yaml --teacher $(RUNS)/teacher/best --data-root $(DATA) \
		--output $(RUNS)/student/teacher_stem --set distill.stem_conv=Conv
	simvg export $(RUNS)/student/teacher_stem/best $(RUNS)/student/one_answer --dtype float16 --keep-branch 0
	simvg train configs/synthref_student_g.yaml --data-root $(DATA) --output $(RUNS)/student_g \
		--set train.load_from=$(RUNS)/student/one_answer
	simvg export $(RUNS)/student_g/best simvg/weights/synthref-student --dtype float16
