// libsodium, imported by exactly one Swift module: MyceliumIdentity (Sources/MyceliumIdentity/Sodium.swift).
#ifndef MYCELIUM_CSODIUM_SHIM_H
#define MYCELIUM_CSODIUM_SHIM_H
#include <sodium.h>
#endif
