*** Settings ***
Documentation       Migration from Mosquitto to AWS IoT (moto) through the same atomic cloud update:
...                 the device ends with an AWS certificate the control plane accepts, and its
...                 Mosquitto login is gone.
Resource            resources/common.resource


*** Test Cases ***
Migration Should Move The Device To AWS IoT
    Provisioned Device    dev
    Migrate Device To Cloud    dev    aws-iot
    Device Should Hold Key Version    dev    ak=1    cloud=2    platform=aws-iot
    Device Should Have Converged    dev

Mosquitto Should Refuse The Migrated Device's Old Login
    Provisioned Device    dev
    Migrate Device To Cloud    dev    aws-iot
    Cloud Should Refuse Old Key    dev

A Migrated Device Should Still Rotate Its Keys
    Provisioned Device    dev
    Migrate Device To Cloud    dev    aws-iot
    Rotate Cloud Key    dev
    Rotate Agent Key    dev
    Device Should Hold Key Version    dev    ak=2    cloud=3    platform=aws-iot
    Device Should Have Converged    dev
