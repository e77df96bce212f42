*** Settings ***
Documentation       A gray release of AK rotation over 20 devices in batches of 5 (DESIGN §1
...                 "Operations"), while two devices lose power in the middle of their rotation and get
...                 it back 5 s of device time later: every device ends on the new AK.
Resource            resources/common.resource
Test Tags           emu-only


*** Test Cases ***
Gray Release Should Rotate Twenty Devices Even When Two Lose Power
    Create Product Order    PO-FLEET    quantity=20
    Create Devices    20    product=PO-FLEET
    Provision All Devices
    Record Flash Operations Of    ak-rotate
    ${erase}=    Flash Operation Index    erase of area
    ${commit}=    Flash Operation Index    commit word
    Cut Power At Flash Operation    dev-3    ${erase}    torn=partial
    Cut Power At Flash Operation    dev-12    ${commit}    torn=none
    Power Returns After    5 s
    Gray Release    kind=ak    batch_size=5    max_failures=0    timeout=60 s    po=PO-FLEET
    Release Should Have Succeeded For    20
    Every Device Should Hold Key Version    ak=2    cloud=1
