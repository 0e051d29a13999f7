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

    /// The route controller and its driver, or nil (and why, in the log) when this node does not
    /// drive a datapath.
    static func makeDatapath(_ config: AgentConfig, logger: Logger) -> (RouteController, DatapathRouteDriver)? {
        guard let mode = RoutingMode(rawValue: config.datapathMode) else {
            logger.info("datapath off (datapath_mode = off): pods on this node reach no other node through Mycelium")
            return nil
        }
        guard AtomicFile.exists(config.datapathObject) else {
            logger.info("datapath off: no compiled datapath at \(config.datapathObject) (make -C CSources/bpf and set datapath_object, or datapath_mode = \"off\" to silence this)")
            return nil
        }
        let host = splitAddress(config.advertisedAddress)?.host ?? ""
        if host.hasPrefix("127.") || host == "localhost" {
            logger.info("datapath off: this node's address \(host) is loopback, so there is no other node to route pods to (set advertise to this node's address)")
            return nil
        }
        let settings = DatapathSettings(mode: mode, networkId: NetworkConfig.networkIdentity(ofNetwork: podNetworkName))
        let driver = DatapathRouteDriver(settings: .init(pinDir: config.datapathPinDir, object: config.datapathObject, nodeAddress: host),
                                         logger: logger)
        return (RouteController(settings: settings), driver)
    }
}
