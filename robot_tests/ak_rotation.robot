*** Settings ***
Documentation       AK rotation authenticated by the current AK (docs/protocol.md §3.2, §6.2), asked
...                 for by the operator and started by the device at its next check-in.
Resource            resources/common.resource


*** Test Cases ***
Rotation Should Give The Next AK Version
    Provisioned Device    dev
    Rotate Agent Key    dev
    Device Should Hold Key Version    dev    ak=2    cloud=1
    Device Should Have Converged    dev

Two Rotations Should Give Version Three
    Provisioned Device    dev
    Rotate Agent Key    dev
    Rotate Agent Key    dev
    Device Should Hold Key Version    dev    ak=3
    Agent Should Agree With Device    dev

Rotation Should Survive A Reboot Afterwards
    Provisioned Device    dev
    Rotate Agent Key    dev
    Cut Power    dev
    Power On Device    dev
    Run Emulator For    20 s
    Device Should Hold Key Version    dev    ak=2
    Device Should Have Converged    dev
