// libvirt's C API (Debian libvirt-dev 9.0): the connection, domain and error APIs, and the QEMU
// monitor passthrough (libvirt-qemu). Only the Swift module `Libvirt` imports this.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libvirt/libvirt-qemu.h>
