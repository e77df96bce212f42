*** Settings ***
Documentation       Cloud credential rotation (docs/protocol.md §3.3, §6.3): the new credential is
...                 tested through the gateway before the device confirms, then the old one is
...                 dropped by the cloud.
Resource            resources/common.resource


*** Test Cases ***
Cloud Key Update Should Give A New Credential The Cloud Accepts
    Provisioned Device    dev
    Rotate Cloud Key    dev
    Device Should Hold Key Version    dev    ak=1    cloud=2    platform=mosquitto
    Device Should Have Converged    dev

Cloud Should Refuse The Credential That Was Replaced
    Provisioned Device    dev
    Rotate Cloud Key    dev
    Cloud Should Refuse Old Key    dev

Two Updates Should Leave Only The Newest Credential Working
    Provisioned Device    dev
    Rotate Cloud Key    dev
    Rotate Cloud Key    dev
    Device Should Hold Key Version    dev    cloud=3
    Device Should Have Converged    dev
    Cloud Should Refuse Old Key    dev
