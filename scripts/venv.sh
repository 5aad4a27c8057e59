# Sourced by scripts/test and scripts/fuzz-api: one Python virtualenv per
# checkout (target/venv) with what the tests use from PyPI, made once and
# reused: schemathesis and prometheus_client for the server's tests, and
# the Python SDK's own test tools and Apache Airflow for clients/python.
# The SDK itself is installed anew each run (not editable, so its packaging
# is what is tested). Exports KYU_TEST_PYTHON.
venv="$PWD/target/venv"
wanted="schemathesis==4.32.5 prometheus_client==0.22.1 apache-airflow==3.3.2 httpx==0.28.1 pytest==9.2.0 pytest-asyncio==1.5.0 mypy==2.4.1 ruff==0.17.5"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.kyu-wanted" 2>/dev/null)" != "$wanted" ]; then
  echo "== making the test virtualenv (PyPI: $wanted)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q $wanted
  echo "$wanted" > "$venv/.kyu-wanted"
fi
"$venv/bin/pip" install -q --no-deps --force-reinstall ./clients/python
export KYU_TEST_PYTHON="$venv/bin/python"
