import MyceliumControl
import VMHost
import XCTest

/// The domain XML alone (no libvirt): what both sides run, escaping, and the metadata.
final class DomainXMLTests: XCTestCase {
    let spec = VMSpec(name: "web-1", memoryMiB: 256, vcpus: 2, kernel: "/k/vmlinuz", initrd: "/k/initrd", cmdline: "console=ttyS0")

    func config(_ role: EndophyteRole, shim: DirtyPageShim? = nil) -> EndophyteDomainConfig {
        EndophyteDomainConfig(role: role, ownershipEpoch: 9, serialLog: "/var/log/web-1.serial", shim: shim)
    }

    func testPrimaryAndStandbyDifferOnlyInTheIncomingArgumentsAndTheirRole() throws {
        let p = try EndophyteDomainXML.make(spec, config(.primary))
        let s = try EndophyteDomainXML.make(spec, config(.standby))
        XCTAssertFalse(p.contains("-incoming"))
        XCTAssertTrue(s.contains("<qemu:arg value='-incoming'/>\n    <qemu:arg value='defer'/>"), s)
        let strip = { (x: String) in
            x.split(separator: "\n").filter { !$0.contains("qemu:") && !$0.contains("mycelium:endophyte") }.joined(separator: "\n")
        }
        XCTAssertEqual(strip(p), strip(s), "the same machine on both sides")
        for needle in ["<domain type='qemu'", "<source type='memfd'/><access mode='shared'/>", "<features><acpi/></features>",
                       "<memory unit='MiB'>256</memory>", "<vcpu>2</vcpu>", "<kernel>/k/vmlinuz</kernel>",
                       "<serial type='file'><source path='/var/log/web-1.serial' append='on'/>"] {
            XCTAssertTrue(p.contains(needle), "missing \(needle) in\n\(p)")
        }
        XCTAssertTrue(p.contains("role='primary' ownership-epoch='9'"), p)
        XCTAssertTrue(s.contains("role='standby' ownership-epoch='9'"), s)
    }

    func testTheShimIsPreloadedWithItsReportPath() throws {
        let x = try EndophyteDomainXML.make(spec, config(.primary, shim: DirtyPageShim(library: "/opt/libmdp_preload.so", report: "/run/web-1.ram")))
        XCTAssertTrue(x.contains("<qemu:env name='LD_PRELOAD' value='/opt/libmdp_preload.so'/>"), x)
        XCTAssertTrue(x.contains("<qemu:env name='MDP_SHIM_REPORT' value='/run/web-1.ram'/>"), x)
        XCTAssertTrue(x.contains("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"))
    }

    func testEverythingFromTheSpecIsEscaped() throws {
        var hostile = spec
        hostile.kernel = "/k/a'b\"c<d>&e"
        hostile.cmdline = "x</cmdline><devices><disk/></devices><cmdline>'"
        let x = try EndophyteDomainXML.make(hostile, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/l/o'g"))
        XCTAssertTrue(x.contains("<kernel>/k/a&apos;b&quot;c&lt;d&gt;&amp;e</kernel>"), x)
        XCTAssertTrue(x.contains("<cmdline>x&lt;/cmdline&gt;&lt;devices&gt;&lt;disk/&gt;&lt;/devices&gt;&lt;cmdline&gt;&apos;</cmdline>"), x)
        XCTAssertTrue(x.contains("path='/l/o&apos;g'"), x)
        XCTAssertFalse(x.contains("<disk/>"))
    }

    func testWhatXMLCannotCarryOrTheNetworkWouldNotRecordIsRefused() {
        var s = spec
        s.cmdline = "a\u{1}b"
        XCTAssertThrowsError(try EndophyteDomainXML.make(s, config(.primary))) { error in
            guard case .invalidSpec(let why) = (error as! VMHostError).code else { return XCTFail("\(error)") }
            XCTAssertTrue(why.contains("cmdline"), why)
        }
        s = spec
        s.memoryMiB = 1
        XCTAssertThrowsError(try EndophyteDomainXML.make(s, config(.primary)))
        s = spec
        s.kernel = ""
        XCTAssertThrowsError(try EndophyteDomainXML.make(s, config(.primary)))
        XCTAssertThrowsError(try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "relative.log")))
    }

    func testMetadataReadsBackInLibvirtsOwnQuoting() {
        let m = EndophyteMetadata(role: .standby, ownershipEpoch: 12)
        XCTAssertEqual(EndophyteDomainXML.parseMetadata(EndophyteDomainXML.metadataElement(m)), m)
        // libvirt hands the element back with double quotes and its own prefix.
        let fromLibvirt = "<endophyte xmlns=\"http://mycelium.dev/xmlns/endophyte/1\" managed-by=\"mycelium\" role=\"primary\" ownership-epoch=\"3\"/>"
        XCTAssertEqual(EndophyteDomainXML.parseMetadata(fromLibvirt), EndophyteMetadata(role: .primary, ownershipEpoch: 3))
        XCTAssertNil(EndophyteDomainXML.parseMetadata("<endophyte managed-by=\"someone-else\" role=\"primary\" ownership-epoch=\"3\"/>"))
        XCTAssertNil(EndophyteDomainXML.parseMetadata("<endophyte managed-by=\"mycelium\" role=\"primary\" ownership-epoch=\"x\"/>"))
    }
}

/// The guest NIC in the domain XML: the same on both copies, validated, absent unless asked for.
final class GuestNICXMLTests: XCTestCase {
    let spec = VMSpec(name: "web-1", memoryMiB: 256, vcpus: 1, kernel: "/k/vmlinuz")

    func testTheNICIsAVirtioTapWithAFixedMACOnBothCopies() throws {
        let nic = GuestNIC(mac: GuestNIC.mac(for: "web-1"), tap: "myc0001")
        let p = try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/s", nic: nic))
        let s = try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .standby, ownershipEpoch: 1, serialLog: "/s", nic: nic))
        let line = "<interface type='ethernet'><mac address='\(nic.mac)'/><target dev='myc0001' managed='yes'/><model type='virtio'/></interface>"
        XCTAssertTrue(p.contains(line), p)
        XCTAssertTrue(s.contains(line), s)
        XCTAssertFalse(p.contains("filter-redirector"), "output commit's filters are attached over QMP, not on the command line")
        XCTAssertEqual(GuestNIC.mac(for: "web-1"), GuestNIC.mac(for: "web-1"))
        XCTAssertNotEqual(GuestNIC.mac(for: "web-1"), GuestNIC.mac(for: "web-2"))
        XCTAssertTrue(GuestNIC.mac(for: "web-1").hasPrefix("52:54:00:"))
        XCTAssertEqual(GuestNIC.mac(for: "web-1").count, 17)
        let without = try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/s"))
        XCTAssertFalse(without.contains("<interface"), "no NIC unless configured")
    }

    func testABadMACOrTapNameIsRefused() {
        for nic in [GuestNIC(mac: "52:54:00:12:34", tap: "t0"), GuestNIC(mac: "53:54:00:12:34:56", tap: "t0"),
                    GuestNIC(mac: "52:54:00:12:34:zz", tap: "t0"), GuestNIC(mac: "52:54:00:12:34:56", tap: ""),
                    GuestNIC(mac: "52:54:00:12:34:56", tap: "a-tap-name-too-long"), GuestNIC(mac: "52:54:00:12:34:56", tap: "t'0")] {
            XCTAssertThrowsError(try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/s", nic: nic))) { e in
                guard let e = e as? VMHostError, case .invalidSpec = e.code else { return XCTFail("\(e)") }
            }
        }
    }
}

/// The direct QMP monitor in the domain XML: the same on both copies, validated, found again.
final class ControlSocketXMLTests: XCTestCase {
    let spec = VMSpec(name: "web-1", memoryMiB: 256, vcpus: 1, kernel: "/k/vmlinuz")

    func testBothCopiesGetASecondMonitorOnTheConfiguredSocketAndItIsFoundAgainInTheXML() throws {
        let path = "/var/lib/mycelium/vm/web-1.qmp"
        let p = try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/s", controlSocket: path))
        let s = try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .standby, ownershipEpoch: 1, serialLog: "/s", controlSocket: path))
        let args = "    <qemu:arg value='-chardev'/>\n    <qemu:arg value='socket,id=mycctl,path=\(path),server=on,wait=off'/>\n"
            + "    <qemu:arg value='-mon'/>\n    <qemu:arg value='chardev=mycctl,mode=control'/>"
        XCTAssertTrue(p.contains(args), p)
        XCTAssertTrue(s.contains(args), s)
        XCTAssertEqual(EndophyteDomainXML.controlSocket(inDomainXML: p), path)
        // libvirt hands the XML back with its own quoting and escaping.
        let fromLibvirt = "<qemu:arg value=\"socket,id=mycctl,path=/v/a&amp;b.qmp,server=on,wait=off\"/>"
        XCTAssertEqual(EndophyteDomainXML.controlSocket(inDomainXML: fromLibvirt), "/v/a&b.qmp")
        let without = try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/s"))
        XCTAssertFalse(without.contains("mycctl"), "no second monitor unless configured")
        XCTAssertNil(EndophyteDomainXML.controlSocket(inDomainXML: without))
    }

    func testASocketPathQEMUOrTheKernelCannotTakeIsRefused() {
        for bad in ["relative.qmp", "/a,b.qmp", "/" + String(repeating: "x", count: 107), "/a\u{1}.qmp"] {
            XCTAssertThrowsError(try EndophyteDomainXML.make(spec, EndophyteDomainConfig(role: .primary, ownershipEpoch: 1, serialLog: "/s", controlSocket: bad))) { e in
                guard let e = e as? VMHostError, case .invalidSpec = e.code else { return XCTFail("\(e)") }
            }
        }
        XCTAssertNil(EndophyteDomainXML.controlSocketProblem("/" + String(repeating: "x", count: 106)), "107 bytes fit")
    }
}

/// The guest's data disk (issue 18): an RBD image through QEMU's librbd, or a file; golden output.
final class DiskXMLTests: XCTestCase {
    let spec = VMSpec(name: "db-1", memoryMiB: 128, vcpus: 1, kernel: "/k/vmlinuz", initrd: "/k/initrd", cmdline: "console=ttyS0 mycelium.disk=1", disk: "vol-db")

    func config(_ role: EndophyteRole, _ disk: VMDiskSource?) -> EndophyteDomainConfig {
        EndophyteDomainConfig(role: role, ownershipEpoch: 4, serialLog: "/var/lib/mycelium/db-1.serial", disk: disk)
    }

    /// The whole domain of a VM with an RBD disk, as libvirt gets it (golden).
    func testAnRBDDiskIsANetworkDiskReadingTheMonitorsAndKeyringFromTheConf() throws {
        let x = try EndophyteDomainXML.make(spec, config(.primary, .rbd(pool: "mycelium-private", image: "vol-db", cephConf: "/etc/ceph/ceph.conf", clientName: "client.admin")))
        let golden = """
        <domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
          <name>db-1</name>
          <metadata>
            <mycelium:endophyte xmlns:mycelium='http://mycelium.dev/xmlns/endophyte/1' managed-by='mycelium' role='primary' ownership-epoch='4'/>
          </metadata>
          <memory unit='MiB'>128</memory>
          <vcpu>1</vcpu>
          <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>/k/vmlinuz</kernel>
            <initrd>/k/initrd</initrd>
            <cmdline>console=ttyS0 mycelium.disk=1</cmdline>
          </os>
          <features><acpi/></features>
          <clock offset='utc'/>
          <devices>
            <serial type='file'><source path='/var/lib/mycelium/db-1.serial' append='on'/><target port='0'/></serial>
            <disk type='network' device='disk'>
              <driver name='qemu' type='raw' cache='none'/>
              <source protocol='rbd' name='mycelium-private/vol-db'>
                <config file='/etc/ceph/ceph.conf'/>
              </source>
              <target dev='vda' bus='virtio'/>
            </disk>
            <controller type='usb' model='none'/>
            <memballoon model='none'/>
          </devices>
        </domain>

        """
        XCTAssertEqual(x, golden)
        XCTAssertFalse(x.contains("key"), "no key, keyring or secret value in the domain")
        // The standby carries the same disk (the device state names it).
        let s = try EndophyteDomainXML.make(spec, config(.standby, .rbd(pool: "mycelium-private", image: "vol-db", cephConf: "/etc/ceph/ceph.conf", clientName: "client.admin")))
        XCTAssertTrue(s.contains("<source protocol='rbd' name='mycelium-private/vol-db'>"), s)
    }

    func testAnotherCephClientNamesALibvirtSecretNeverAKey() throws {
        let x = try EndophyteDomainXML.make(spec, config(.primary, .rbd(pool: "p", image: "i", cephConf: "/c/ceph.conf", clientName: "client.mycelium")))
        XCTAssertTrue(x.contains("      <auth username='mycelium'><secret type='ceph' usage='mycelium-ceph-mycelium'/></auth>\n"), x)
    }

    func testAFileDiskAndBadSourcesAreRefused() throws {
        let x = try EndophyteDomainXML.make(spec, config(.primary, .file(path: "/var/lib/mycelium/volumes/vol-db.raw")))
        XCTAssertTrue(x.contains("""
                <disk type='file' device='disk'>
                  <driver name='qemu' type='raw'/>
                  <source file='/var/lib/mycelium/volumes/vol-db.raw'/>
                  <target dev='vda' bus='virtio'/>
                </disk>

            """), x)
        func refused(_ d: VMDiskSource?, _ needle: String, _ s: VMSpec? = nil) {
            XCTAssertThrowsError(try EndophyteDomainXML.make(s ?? spec, config(.primary, d))) { error in
                guard case .invalidSpec(let why) = (error as! VMHostError).code else { return XCTFail("\(error)") }
                XCTAssertTrue(why.contains(needle), "\(why) lacks \(needle)")
            }
        }
        refused(nil, "did not resolve it")
        refused(.rbd(pool: "p/q", image: "i", cephConf: "/c", clientName: "client.admin"), "pool name")
        refused(.rbd(pool: "p", image: "i@s", cephConf: "/c", clientName: "client.admin"), "image name")
        refused(.rbd(pool: "p", image: "i", cephConf: "ceph.conf", clientName: "client.admin"), "absolute")
        refused(.rbd(pool: "p", image: "i", cephConf: "/c", clientName: "admin"), "client.NAME")
        refused(.file(path: "relative.raw"), "absolute")
        refused(.file(path: "/a\u{1}b"), "control character")
        var bad = spec
        bad.disk = "a/b"
        refused(.file(path: "/x"), "not a volume name", bad)
        // No disk named: no disk device, whatever the host would resolve.
        var none = spec
        none.disk = ""
        XCTAssertFalse(try EndophyteDomainXML.make(none, config(.primary, nil)).contains("<disk"))
    }
}
