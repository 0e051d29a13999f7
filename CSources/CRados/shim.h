// librados and librbd's C APIs (Debian librados-dev/librbd-dev 16.2): the cluster connection, pools,
// monitor commands, and RBD images, snapshots, watchers and the exclusive lock. Only the Swift module
// `MyceliumRBD` imports this.
#include <rados/librados.h>
#include <rbd/librbd.h>
