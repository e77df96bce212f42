*** Settings ***
Documentation       Signs of a leaked PK (DESIGN §1, agent policy): one ID asking for a second AK, and
...                 more activations than the PO ordered, are refused and raised as anomalies.
Resource            resources/common.resource


*** Test Cases ***
A Clone Of A Provisioned Device Should Be Refused And Raise An Anomaly
    Provisioned Device    dev
    Create Device    clone    same_uid_as=dev
    Device Should Be Refused    clone
    Anomaly Should Be Raised    duplicate_provisioning    device=clone
    Device Should Have Converged    dev

Activations Beyond The Ordered Quantity Should Be Refused
    Create Product Order    PO-SMALL    quantity=2
    Create Device    first    product=PO-SMALL
    Create Device    second    product=PO-SMALL
    Create Device    third    product=PO-SMALL
    Provision Device    first
    Provision Device    second
    Device Should Be Refused    third
    Anomaly Should Be Raised    quantity_exceeded    device=third
    Device Should Have Converged    first
