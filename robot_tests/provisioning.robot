*** Settings ***
Documentation       Stage 2 on first power-on and the first cloud credentials (docs/protocol.md §3.1,
...                 §3.3, §6.1): the factory image boots on its PK, provisions, erases the PK, and the
...                 key in its flash is the one the agent and the cloud know.
Resource            resources/common.resource


*** Test Cases ***
First Boot Should Report The Factory Key And Provision At Once
    Create Device    dev
    Create Terminal Tester    sysbus.usart1    machine=dev
    Start Emulation
    Wait For Line On Uart    keys=factory area=B gen=1
    Device Should Hold Key Version    dev    ak=1    cloud=1

Provisioning Should Give An AK And A Cloud Credential And Erase The PK
    Provisioned Device    dev
    Device Should Not Hold Product Key    dev
    Device Should Have Converged    dev

Reboot After Provisioning Should Boot On The Agent Key
    Provisioned Device    dev
    Create Terminal Tester    machine=dev
    Cut Power    dev
    Power On Device    dev
    Wait For Line On Uart    keys=cloud
    Last Boot Should Report    dev    cloud
    Device Should Have Converged    dev

Garbage On The Link Should Not Disturb The Device
    Provisioned Device    dev
    Create Terminal Tester    machine=dev
    Write Line To Uart    this is not a frame
    Run Emulator For    15 s
    Device Should Have Converged    dev

Check-Ins Over A Minute Of Device Time Should Keep Agent And Device In Step
    Provisioned Device    dev
    Execute Command    emulation RunFor "60"
    Device Should Hold Key Version    dev    ak=1    cloud=1
    Device Should Have Converged    dev
