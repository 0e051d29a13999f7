// The agent's part in the pod network: whether this node drives its eBPF datapath (the route
// controller, Sources/NetworkController/RouteController.swift, with its driver in NetworkDriver),
// decided once at start from the configuration and what is installed.

import Foundation
import Logging
import MyceliumCNI
import MyceliumCore
import NetworkController
import NetworkDriver

extension Agent {
    /// The network pods join (the CNI network the agent's runtimes use); its datapath identity is
    /// mycelium-cni's default for that name, so plugin and agent agree without configuration.
    public static let podNetworkName = "mycelium"

    /// Whether this node drives its datapath: the routing mode and this node's address, or why not.
    static func datapathPlan(_ config: AgentConfig) -> Result<(RoutingMode, String), DriverFailure> {
        guard let mode = RoutingMode(rawValue: config.datapathMode) else {
            return .failure(DriverFailure("datapath_mode = off"))
        }
        guard AtomicFile.exists(config.datapathObject) else {
            return .failure(DriverFailure("no compiled datapath at \(config.datapathObject) (make -C CSources/bpf and set datapath_object, or datapath_mode = \"off\" to silence this)"))
        }
        let host = splitAddress(config.advertisedAddress)?.host ?? ""
        if host.hasPrefix("127.") || host == "localhost" {
            return .failure(DriverFailure("this node's address \(host) is loopback, so there is no other node to route pods to (set advertise to this node's address)"))
        }
        return .success((mode, host))
    }

    /// The route controller and its driver, or nil (and why, in the log) when this node does not
    /// drive a datapath.
    static func makeDatapath(_ config: AgentConfig, logger: Logger) -> (RouteController, DatapathRouteDriver)? {
        let mode: RoutingMode, host: String
        switch datapathPlan(config) {
        case .failure(let why):
            logger.info("datapath off: pods on this node reach no other node through Mycelium", metadata: ["reason": "\(why)"])
            return nil
        case .success(let plan): (mode, host) = plan
        }
        let settings = DatapathSettings(mode: mode, networkId: NetworkConfig.networkIdentity(ofNetwork: podNetworkName))
        let driver = DatapathRouteDriver(settings: .init(pinDir: config.datapathPinDir, object: config.datapathObject, nodeAddress: host),
                                         logger: logger)
        return (RouteController(settings: settings), driver)
    }

    /// What pods on this node need from the network the agent drives: their MTU (the underlay's,
    /// less VXLAN's 50 bytes unless every peer is reached natively) and the DNS server that names
    /// services for them (this node's address, when pod DNS runs). Zero and nil without a datapath.
    static func podNetworkFacts(_ config: AgentConfig) -> (mtu: Int, dns: String?) {
        guard case .success(let (mode, host)) = datapathPlan(config) else { return (0, nil) }
        let underlay = DatapathRouteDriver.mtu(ofInterfaceHolding: host) ?? 1500
        return (mode == .native ? underlay : underlay - 50, config.podDNS ? host : nil)
    }
}
