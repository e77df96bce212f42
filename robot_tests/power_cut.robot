*** Settings ***
Documentation       Power cuts at chosen flash operations (docs/flash-layout.md §4): whatever the cut,
...                 the device boots into the old or the new key — never neither — and then agrees
...                 with agent and cloud. The exhaustive sweep is `otakey campaign power-cut`.
Resource            resources/common.resource
Test Tags           emu-only


*** Test Cases ***
Cut During The Erase Of The Inactive Area Should Keep The Old AK
    Provisioned Device    dev
    Cut Rotation Of dev At    erase of area    torn=partial
    Device Should Hold Key Version    dev    ak=1
    Device dev Should Recover To AK Version 2

Cut Mid-Word Of The New Key Should Keep The Old AK
    Provisioned Device    dev
    Cut Rotation Of dev At    record word    occurrence=middle    torn=partial
    Device Should Hold Key Version    dev    ak=1
    Device dev Should Recover To AK Version 2

Cut Right Before The Commit Marker Should Keep The Old AK
    Provisioned Device    dev
    Cut Rotation Of dev At    commit word    torn=none
    Device Should Hold Key Version    dev    ak=1
    Device dev Should Recover To AK Version 2

Cut Right After The Commit Marker Should Boot On The New AK
    Provisioned Device    dev
    Cut Rotation Of dev At    commit word    torn=done
    Device Should Hold Key Version    dev    ak=2
    Device dev Should Recover To AK Version 2

Cut During The PK Erase Should Finish Provisioning Without The PK
    Record Flash Operations Of    provision
    ${op}=    Flash Operation Index    PK scrub erase
    Create Device    dev
    Cut Power At Flash Operation    dev    ${op}    torn=partial
    Provision Device    dev
    Device Should Be Powered Off    dev
    Device Should Hold Key Version    dev    ak=1
    Power On Device    dev
    Device Should Not Hold Product Key    dev
    Provision Device    dev
    Device Should Have Converged    dev

A Second Cut During The Recovery Should Still Converge
    Provisioned Device    dev
    Cut Rotation Of dev At    commit word    torn=none
    Cut Power At Flash Operation    dev    1    torn=partial
    Power On Device    dev
    Device Should Be Powered Off    dev
    Device Should Hold Key Version    dev    ak=1
    Device dev Should Recover To AK Version 2

A Cut At An Instruction Inside The Rotation Should Keep A Valid Key
    Provisioned Device    dev
    Cut Power At Instruction    dev    4000000
    Rotate Agent Key    dev
    Device dev Should Recover To AK Version 2


*** Keywords ***
Cut Rotation Of ${name} At
    [Documentation]    Record an AK rotation's flash operations on a scratch device, schedule the
    ...    cut at the one described, and start the rotation: it ends with the power gone.
    [Arguments]    ${what}    ${torn}=none    ${occurrence}=first
    Record Flash Operations Of    ak-rotate
    ${op}=    Flash Operation Index    ${what}    ${occurrence}
    Cut Power At Flash Operation    ${name}    ${op}    torn=${torn}
    Rotate Agent Key    ${name}
    Device Should Be Powered Off    ${name}

Device ${name} Should Recover To AK Version ${version}
    [Documentation]    Power comes back; within 30 s of device time the rotation is finished and
    ...    flash, agent and cloud agree.
    Power On Device    ${name}
    Run Emulator For    30 s
    Device Should Hold Key Version    ${name}    ak=${version}
    Device Should Have Converged    ${name}
