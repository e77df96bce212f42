*** Settings ***
Documentation       OTA-Key end-to-end suites: the real firmware on a device backend, a real agent,
...                 real clouds. Run them all: scripts/robot.sh (or robot --pythonpath agent
...                 --variable BACKEND:emu robot_tests); one suite: add --suite power_cut.
Resource            resources/common.resource
Suite Setup         Start OTA-Key Test Stack
Suite Teardown      Stop OTA-Key Test Stack
Test Setup          Start OTA-Key Test
Test Teardown       End OTA-Key Test
