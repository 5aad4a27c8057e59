# Sourced by scripts/test and scripts/fuzz-api: one Python virtualenv per
# checkout (target/venv) with what the tests use from PyPI, made once and
# reused. Exports KYU_TEST_PYTHON.
venv="$PWD/target/venv"
wanted="schemathesis==4.32.5 prometheus_client==0.22.1"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.kyu-wanted" 2>/dev/null)" != "$wanted" ]; then
  echo "== making the test virtualenv (PyPI: $wanted)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q $wanted
  echo "$wanted" > "$venv/.kyu-wanted"
fi
export KYU_TEST_PYTHON="$venv/bin/python"
