// Greedy placement: each missing slot goes to the best feasible node, compared lexicographically on
//  1. the service's preferences (sum of matched weights): an operator's stated wish beats any
//     heuristic, so it dominates rather than mixing into a weighted sum;
//  2. the service's own spread: fewest of its instances in the region, then zone, then rack, then
//     node (from its spreadLevel down): losing one failure domain should cost as few instances as
//     possible, whatever the strategy (like Nomad's job anti-affinity under binpack);
//  3. the strategy's fit, Nomad's formula on the fractions left free after placement
//     (nomad/structs/funcs.go ScoreFitBinPack): binpack maximises 20 − (10^freeCpu + 10^freeMem),
//     spread maximises its opposite; the exponent favours nodes balanced across both dimensions;
//  4. a hash of (seed, service, slot, node), so ties do not all land on the lowest node ID.

extension Engine {
    /// Places the missing slots of `s`, lowest first, until all are placed or no node can take one.
    /// Returns how many it placed.
    @discardableResult
    mutating func placeGreedily(_ s: Int) -> Int {
        var count = 0
        let forbidden = conflictNodes(of: s)
        for slot in 0..<replicas[s] where slotNode[s][slot] < 0 {
            // Instances of one service are interchangeable, so when one slot finds no node, none will.
            guard let n = bestNode(for: s, slot: slot, forbidden: forbidden) else { break }
            place(s, slot: slot, on: n, kept: false)
            count += 1
        }
        return count
    }

    /// Nodes running a service that `s` must not share a node with (fixed while `s` is placed).
    func conflictNodes(of s: Int) -> Set<Int32> {
        var out = Set<Int32>()
        for c in conflicts[s] { out.formUnion(onNode[c].keys) }
        return out
    }

    func bestNode(for s: Int, slot: Int, forbidden: Set<Int32>) -> Int32? {
        let candidates = eligibility(of: s).ready
        guard !candidates.isEmpty else { return nil }
        let rc = cpu[s], rm = mem[s]
        let limitPerNode = maxPerNode[s]
        let prefs: [Int]? = preferenceOf[s] >= 0 ? preferenceScores[preferenceOf[s]] : nil
        let spreads = placed[s] > 0
        let binpack = services[s].strategy == .binpack
        let checkForbidden = !forbidden.isEmpty
        let svcKey = serviceKey[s]

        var best: Int32 = -1
        var bestPref = 0, bestSpread: UInt64 = 0, bestFit = 0.0
        var bestHash: UInt64?  // computed only when a tie needs it

        // With a candidate limit, start at a seeded offset and stop after `limit` feasible nodes.
        var k = 0
        var limit = Int.max
        if let l = options.candidateLimit, l > 0, candidates.count > l {
            limit = l
            k = Int(tieBreak(seed: seed, service: svcKey, slot: slot, node: 0) % UInt64(candidates.count))
        }
        var feasible = 0
        for _ in 0..<candidates.count {
            let n = candidates[k]
            k = k + 1 == candidates.count ? 0 : k + 1
            let i = Int(n)
            let fc = freeCpu[i] - rc, fm = freeMem[i] - rm
            if fc < 0 || fm < 0 { continue }
            if limitPerNode != Int.max, Int(onNode[s][n] ?? 0) >= limitPerNode { continue }
            if checkForbidden, forbidden.contains(n) { continue }
            feasible += 1

            let pref = prefs?[i] ?? 0
            var take = best < 0 || pref > bestPref
            var spread: UInt64 = 0, fit = 0.0, hash: UInt64?
            if take || pref == bestPref {
                spread = spreads ? spreadKey(s, n) : 0
                take = take || spread < bestSpread
                if take || spread == bestSpread {
                    let freeSum = pow10Unit(Double(fc) * invAllocCpu[i]) + pow10Unit(Double(fm) * invAllocMem[i])
                    fit = binpack ? 20 - freeSum : freeSum
                    take = take || fit > bestFit
                    if !take && fit == bestFit {
                        let h = tieBreak(seed: seed, service: svcKey, slot: slot, node: nodeKey[i])
                        let b = bestHash ?? tieBreak(seed: seed, service: svcKey, slot: slot, node: nodeKey[Int(best)])
                        bestHash = b
                        hash = h
                        take = h < b || (h == b && n < best)
                    }
                }
            }
            if take {
                best = n
                bestPref = pref
                bestSpread = spread
                bestFit = fit
                bestHash = hash
            }
            if feasible >= limit { break }
        }
        return best >= 0 ? best : nil
    }

    /// The service's own instance counts in each failure domain of `n`, coarsest first, packed 16 bits
    /// a level so that comparing the integers compares the counts lexicographically.
    @inline(__always)
    func spreadKey(_ s: Int, _ n: Int32) -> UInt64 {
        var key: UInt64 = 0
        for (i, level) in spreadLevels[s].enumerated() {
            let c = domainCount[s][i][domains[level][Int(n)]] ?? 0
            key = key << 16 | UInt64(min(c, 0xFFFF))
        }
        return key << 16 | UInt64(min(onNode[s][n] ?? 0, 0xFFFF))
    }
}
