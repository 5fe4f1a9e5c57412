// A cluster config: the machines a seqpar job runs on and how Open MPI reaches them, read from one
// file of cluster-configs/ (format: cluster-configs/README.md) and checked before anything starts.
// Every refusal names the file, the line and what was expected there. No MPI here: the config is
// read and the mpirun command line built (LaunchPlan) without starting anything.

import Foundation

public struct ClusterConfig: Equatable, Sendable {
    public struct Host: Equatable, Sendable {
        /// What the host is called (its name in mpirun's host list unless `address` is given).
        public var name: String
        /// How mpirun reaches it, when not by name.
        public var address: String?
        /// Ranks it may run.
        public var slots: Int
        public var line: Int

        public init(name: String, address: String? = nil, slots: Int, line: Int = 0) {
            (self.name, self.address, self.slots, self.line) = (name, address, slots, line)
        }

        /// The name mpirun is given.
        public var target: String { address ?? name }

        public static func == (a: Host, b: Host) -> Bool { a.name == b.name && a.address == b.address && a.slots == b.slots }
    }

    /// Open MPI settings.
    public struct MPI: Equatable, Sendable {
        public var mpirun = "mpirun"
        /// Byte transfer layers, e.g. "tcp,self" or "self,vader,tcp".
        public var btl: String?
        /// Point-to-point messaging layer, e.g. "ob1" or "ucx".
        public var pml: String?
        /// Networks (interface names or CIDR subnets) for MPI traffic and Open MPI's own
        /// out-of-band messages: btl_tcp_if_include and oob_tcp_if_include.
        public var interfaces: String?
        /// How mpirun starts its daemons on other hosts (plm_rsh_agent), e.g. "ssh".
        public var rshAgent: String?
        /// Further MCA parameters, in the order written.
        public var mca: [MCAParameter] = []
        /// Further mpirun arguments, as given.
        public var arguments: [String] = []
    }

    public struct MCAParameter: Equatable, Sendable {
        public var name: String
        public var value: String

        public init(name: String, value: String) { (self.name, self.value) = (name, value) }
    }

    /// Simulated hosts (Launch/netns-hosts): mpirun runs inside `mpirunHost` and starts its daemons
    /// in the others with Launch/netns-rsh.
    public struct NetworkNamespaces: Equatable, Sendable {
        public var mpirunHost: String
    }

    /// A batch job under Slurm: the allocation names the hosts.
    public struct Slurm: Equatable, Sendable {
        public enum Launcher: String, Sendable, CaseIterable { case srun, mpirun }
        public var nodes: Int
        public var tasksPerNode: Int?
        public var cpusPerTask: Int?
        public var jobName = "seqpar"
        public var partition: String?
        public var account: String?
        public var time: String?
        public var launcher = Launcher.srun
        /// srun's --mpi plugin.
        public var srunMPI = "pmix"
        /// More #SBATCH options, e.g. "--exclusive".
        public var sbatch: [String] = []
        /// Shell lines run before the launch, e.g. "module load openmpi".
        public var prologue: [String] = []
    }

    /// The file it was read from (as given).
    public var file: String
    public var hosts: [Host] = []
    public var ranksPerNode: Int?
    public var blasThreads = 1
    /// The --strategy given to run and verify when their arguments name none.
    public var strategy: String?
    /// mpirun --bind-to.
    public var bindTo: String?
    /// Let mpirun start more ranks than a host has slots (or cores).
    public var oversubscribe = false
    /// Environment forwarded to every rank: NAME (this environment's value) or NAME=value.
    public var environment: [String] = []
    public var mpi = MPI()
    public var namespaces: NetworkNamespaces?
    public var slurm: Slurm?

    /// The most ranks, slots, nodes, tasks or threads a config (or a launch request) may name:
    /// far beyond any job, and small enough that the sums and products the launch plan forms
    /// from such counts stay far from Int's limit.
    public static let maxCount = 1 << 24

    /// What `mpirun --bind-to` accepts.
    public static let bindings = ["none", "hwthread", "core", "l2cache", "l3cache", "socket", "numa", "board"]

    public init(file: String) { self.file = file }

    /// A host name (labels of letters, digits, '-' and '_', not starting or ending with '-',
    /// joined by '.') or an IPv4 address. Host names go into mpirun's host list and hostfile,
    /// where a space or a comma would mean something else. Not an IPv6 address (see
    /// `isIPv6Address`).
    public static func isHostName(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253 else { return false }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            guard let first = label.unicodeScalars.first, let last = label.unicodeScalars.last, label.utf8.count <= 63,
                first != "-", last != "-"
            else { return false }
            return label.unicodeScalars.allSatisfy { isWordCharacter($0) || $0 == "-" }
        }
    }

    /// Looks like an IPv6 address (hex digits, ':' and '.', with a ':'; or in [brackets]).
    /// Open MPI's --host takes `host:slots` and its hostfile parser stops at ':' or '[', so
    /// neither can name such a host (open-mpi/ompi#6656): a name or an IPv4 address must.
    public static func isIPv6Address(_ text: String) -> Bool {
        var scalars = Substring(text).unicodeScalars
        if scalars.first == "[", scalars.last == "]" { scalars = scalars.dropFirst().dropLast() }
        return scalars.contains(":")
            && scalars.allSatisfy { $0 == ":" || $0 == "." || ("0" ... "9").contains($0) || ("a" ... "f").contains($0) || ("A" ... "F").contains($0) }
    }

    /// Letters, digits and '_' (ASCII).
    static func isWordCharacter(_ c: Unicode.Scalar) -> Bool {
        c == "_" || ("a" ... "z").contains(c) || ("A" ... "Z").contains(c) || ("0" ... "9").contains(c)
    }

    /// An MCA parameter name: it becomes part of OMPI_MCA_<name> in a script's export line.
    public static func isMCAName(_ text: String) -> Bool { !text.isEmpty && text.unicodeScalars.allSatisfy(isWordCharacter) }

    /// Reads and checks the config at `path`. `strategies`: the names a `strategy` key may take
    /// (the tool passes its registered strategies; nil: any).
    public static func load(_ path: String, strategies: [String]? = nil) throws -> ClusterConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, line: nil, "cannot read the file (is the path right? configs live in cluster-configs/)")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw ConfigError(file: path, line: nil, "not UTF-8 text") }
        return try parse(text, file: path, strategies: strategies)
    }

    /// Parses and checks config text; `file` names it in errors.
    public static func parse(_ text: String, file: String, strategies: [String]? = nil) throws -> ClusterConfig {
        let document = try TOML.parse(text, file: file)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).count
        let lastLine = max(1, text.hasSuffix("\n") ? lines - 1 : lines)
        return try ClusterConfig(document, file: file, lastLine: lastLine, strategies: strategies)
    }

    init(_ document: TOMLTable, file: String, lastLine: Int, strategies: [String]?) throws {
        self.file = file
        let top = try Fields(
            document, "the top level", file: file,
            keys: ["host", "ranks_per_node", "blas_threads", "strategy", "bind_to", "oversubscribe", "env", "mpi", "netns", "slurm"])
        for table in try top.tables("host") {
            let fields = try Fields(table, "[[host]]", file: file, keys: ["name", "address", "slots"])
            guard let name = try fields.string("name") else {
                throw ConfigError(file: file, line: table.line, "[[host]] has no name; expected name = \"…\" (the host's name)")
            }
            guard !name.isEmpty else { throw fields.error("name", "a host name must not be empty") }
            guard let slots = try fields.integer("slots") else {
                throw ConfigError(file: file, line: table.line, "[[host]] '\(name)' has no slots; expected slots = N (how many ranks it may run, at least 1)")
            }
            guard slots >= 1 else { throw fields.error("slots", "host '\(name)' has slots = \(slots); expected at least 1") }
            guard slots <= Self.maxCount else { throw fields.error("slots", "host '\(name)' has slots = \(slots); expected at most \(Self.maxCount)") }
            let address = try fields.string("address")
            if Self.isIPv6Address(address ?? name) {
                throw fields.error(
                    address == nil ? "name" : "address",
                    "host '\(name)' is reached by the IPv6 address '\(address ?? name)', which Open MPI's --host and hostfile cannot take; expected a host name or an IPv4 address")
            }
            guard Self.isHostName(name) else {
                throw fields.error("name", "host name '\(name)' is not a host name; expected letters, digits, '-', '_' and '.' (e.g. node-01.cluster), or an IPv4 address")
            }
            if let address, !Self.isHostName(address) {
                throw fields.error("address", "address '\(address)' of host '\(name)' is not a host name or IPv4 address; expected e.g. 10.0.0.2 or node-01.cluster")
            }
            if let other = hosts.first(where: { $0.name == name }) {
                throw ConfigError(file: file, line: table.line, "host '\(name)' is already described on line \(other.line); expected each host once")
            }
            hosts.append(Host(name: name, address: address, slots: slots, line: table.line))
        }
        ranksPerNode = try top.integer("ranks_per_node", atLeast: 1, atMost: Self.maxCount)
        blasThreads = try top.integer("blas_threads", atLeast: 1, atMost: Self.maxCount) ?? 1
        if let strategy = try top.string("strategy") {
            if let strategies, !strategies.contains(strategy) {
                throw top.error("strategy", "unknown strategy '\(strategy)'; expected one of \(strategies.joined(separator: ", "))")
            }
            self.strategy = strategy
        }
        if let bindTo = try top.string("bind_to") {
            guard Self.bindings.contains(bindTo) else {
                throw top.error("bind_to", "unknown binding '\(bindTo)'; expected one of \(Self.bindings.joined(separator: ", "))")
            }
            self.bindTo = bindTo
        }
        oversubscribe = try top.bool("oversubscribe") ?? false
        environment = try top.strings("env") ?? []
        for item in environment {
            let name = item.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
            guard let first = name.unicodeScalars.first, first == "_" || CharacterSet.letters.contains(first),
                name.unicodeScalars.allSatisfy({ $0 == "_" || ("a" ... "z").contains($0) || ("A" ... "Z").contains($0) || ("0" ... "9").contains($0) })
            else { throw top.error("env", "'\(item)' is not NAME or NAME=value (NAME: letters, digits and '_')") }
        }
        if let table = try top.table("mpi") { mpi = try Self.mpi(table, file: file) }
        if let table = try top.table("netns") {
            let fields = try Fields(table, "[netns]", file: file, keys: ["mpirun_host"])
            guard let host = try fields.string("mpirun_host") else {
                throw ConfigError(file: file, line: table.line, "[netns] has no mpirun_host; expected mpirun_host = \"seqpar-h1\" (the simulated host mpirun runs in)")
            }
            guard hosts.contains(where: { $0.name == host }) else {
                throw fields.error("mpirun_host", "mpirun_host '\(host)' is not one of the hosts; expected one of \(hosts.map(\.name).joined(separator: ", "))")
            }
            namespaces = NetworkNamespaces(mpirunHost: host)
        }
        if let table = try top.table("slurm") { slurm = try Self.slurm(table, file: file) }

        if hosts.isEmpty && slurm == nil {
            throw ConfigError(
                file: file, line: lastLine,
                "the file describes no host; expected at least one [[host]] table with name and slots (or a [slurm] table, where the allocation names the hosts)")
        }
        if slurm != nil, !hosts.isEmpty {
            throw top.error("slurm", "a [slurm] config takes its hosts from the allocation; expected no [[host]] tables beside it")
        }
        if slurm != nil, namespaces != nil { throw top.error("netns", "[netns] describes simulated hosts on this machine; expected it without [slurm]") }
        if let ranksPerNode, !oversubscribe, let host = hosts.first(where: { $0.slots < ranksPerNode }) {
            throw top.error(
                "ranks_per_node",
                "ranks_per_node = \(ranksPerNode) exceeds the \(host.slots) slot(s) of host '\(host.name)' (line \(host.line)); expected at most \(hosts.map(\.slots).min()!), or oversubscribe = true"
            )
        }
    }

    private static func mpi(_ table: TOMLTable, file: String) throws -> MPI {
        let fields = try Fields(table, "[mpi]", file: file, keys: ["mpirun", "btl", "pml", "interfaces", "rsh_agent", "mca", "args"])
        var mpi = MPI()
        mpi.mpirun = try fields.string("mpirun") ?? "mpirun"
        mpi.btl = try fields.string("btl")
        mpi.pml = try fields.string("pml")
        mpi.interfaces = try fields.string("interfaces")
        mpi.rshAgent = try fields.string("rsh_agent")
        mpi.arguments = try fields.strings("args") ?? []
        if let mca = try fields.table("mca") {
            // What [mpi] sets by name is not set again here: two values would leave it to Open MPI to pick one.
            let named = ["btl": "btl", "pml": "pml", "btl_tcp_if_include": "interfaces", "oob_tcp_if_include": "interfaces", "plm_rsh_agent": "rsh_agent"]
            for entry in mca.entries {
                let value: String
                switch entry.value {
                case .string(let text): value = text
                case .integer(let n): value = String(n)
                case .boolean(let b): value = b ? "1" : "0"
                default:
                    throw ConfigError(file: file, line: entry.line, "MCA parameter '\(entry.key)' in [mpi.mca] is \(entry.value.kind); expected a string, an integer or a boolean")
                }
                guard Self.isMCAName(entry.key) else {
                    throw ConfigError(
                        file: file, line: entry.line,
                        "MCA parameter name '\(entry.key)' in [mpi.mca] is not a name; expected letters, digits and '_' only (e.g. btl_tcp_if_include)")
                }
                if let key = named[entry.key] {
                    throw ConfigError(file: file, line: entry.line, "MCA parameter '\(entry.key)' has its own key in [mpi]; expected it as \(key) = … there")
                }
                mpi.mca.append(MCAParameter(name: entry.key, value: value))
            }
        }
        return mpi
    }

    private static func slurm(_ table: TOMLTable, file: String) throws -> Slurm {
        let fields = try Fields(
            table, "[slurm]", file: file,
            keys: ["nodes", "ntasks_per_node", "cpus_per_task", "job_name", "partition", "account", "time", "launcher", "srun_mpi", "sbatch", "prologue"])
        guard let nodes = try fields.integer("nodes", atLeast: 1, atMost: maxCount) else {
            throw ConfigError(file: file, line: table.line, "[slurm] has no nodes; expected nodes = N (how many nodes to allocate)")
        }
        var slurm = Slurm(nodes: nodes)
        slurm.srunMPI = try fields.string("srun_mpi") ?? "pmix"
        slurm.tasksPerNode = try fields.integer("ntasks_per_node", atLeast: 1, atMost: maxCount)
        slurm.cpusPerTask = try fields.integer("cpus_per_task", atLeast: 1, atMost: maxCount)
        slurm.jobName = try fields.string("job_name") ?? "seqpar"
        slurm.partition = try fields.string("partition")
        slurm.account = try fields.string("account")
        slurm.time = try fields.string("time")
        // These go into #SBATCH lines, which sbatch splits into options itself: one word each.
        let word = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.,:+@%-")
        for (key, value) in [("job_name", slurm.jobName), ("partition", slurm.partition), ("account", slurm.account), ("time", slurm.time), ("srun_mpi", slurm.srunMPI)] {
            if let value, value.isEmpty || !value.unicodeScalars.allSatisfy(word.contains) {
                throw fields.error(key, "\(key) = '\(value)' in [slurm]; expected one word of letters, digits and _ . , : + @ % - (it is written into an #SBATCH line)")
            }
        }
        if let launcher = try fields.string("launcher") {
            guard let known = Slurm.Launcher(rawValue: launcher) else {
                throw fields.error("launcher", "unknown launcher '\(launcher)'; expected srun or mpirun")
            }
            slurm.launcher = known
        }
        slurm.sbatch = try fields.strings("sbatch") ?? []
        slurm.prologue = try fields.strings("prologue") ?? []
        return slurm
    }
}

/// The keys of one table, refused when unknown or of the wrong kind.
struct Fields {
    let table: TOMLTable
    let context: String
    let file: String

    init(_ table: TOMLTable, _ context: String, file: String, keys: [String]) throws {
        (self.table, self.context, self.file) = (table, context, file)
        for entry in table.entries where !keys.contains(entry.key) {
            var message = "unknown key '\(entry.key)' in \(context); expected one of \(keys.joined(separator: ", "))"
            if let near = keys.first(where: { Self.isNear($0, entry.key) }) { message += " (did you mean '\(near)'?)" }
            throw ConfigError(file: file, line: entry.line, message)
        }
    }

    /// Off by one edit, or a plural: likely meant.
    static func isNear(_ a: String, _ b: String) -> Bool {
        let (x, y) = (Array(a), Array(b))
        if x.count == y.count { return zip(x, y).filter { $0 != $1 }.count == 1 }
        let (short, long) = x.count < y.count ? (x, y) : (y, x)
        guard long.count == short.count + 1 else { return false }
        for i in 0 ... short.count where Array(long[..<i] + long[(i + 1)...]) == short { return true }
        return false
    }

    func error(_ key: String, _ message: String) -> ConfigError { ConfigError(file: file, line: table[key]?.line ?? table.line, message) }

    func wrongKind(_ entry: TOMLEntry, _ expected: String) -> ConfigError {
        ConfigError(file: file, line: entry.line, "'\(entry.key)' in \(context) is \(entry.value.kind); expected \(expected)")
    }

    func string(_ key: String) throws -> String? {
        guard let entry = table[key] else { return nil }
        guard case .string(let text) = entry.value else { throw wrongKind(entry, "a string in quotes") }
        guard !text.contains("\n") else { throw ConfigError(file: file, line: entry.line, "'\(key)' in \(context) contains a line break; expected one line") }
        return text
    }

    func integer(_ key: String, atLeast minimum: Int? = nil, atMost maximum: Int? = nil) throws -> Int? {
        guard let entry = table[key] else { return nil }
        guard case .integer(let n) = entry.value else { throw wrongKind(entry, "an integer") }
        if let minimum, n < minimum {
            throw ConfigError(file: file, line: entry.line, "\(key) = \(n) in \(context); expected at least \(minimum)")
        }
        if let maximum, n > maximum {
            throw ConfigError(file: file, line: entry.line, "\(key) = \(n) in \(context); expected at most \(maximum)")
        }
        return n
    }

    func bool(_ key: String) throws -> Bool? {
        guard let entry = table[key] else { return nil }
        guard case .boolean(let b) = entry.value else { throw wrongKind(entry, "true or false") }
        return b
    }

    func strings(_ key: String) throws -> [String]? {
        guard let entry = table[key] else { return nil }
        guard case .array(let elements) = entry.value else { throw wrongKind(entry, "an array of strings, [\"…\", …]") }
        return try elements.map { element in
            guard case .string(let text) = element, !text.contains("\n") else {
                throw ConfigError(file: file, line: entry.line, "'\(key)' in \(context) holds \(element.kind); expected an array of one-line strings")
            }
            return text
        }
    }

    func table(_ key: String) throws -> TOMLTable? {
        guard let entry = table[key] else { return nil }
        guard case .table(let inner) = entry.value else { throw wrongKind(entry, "a table ([\(key)] or { … })") }
        return inner
    }

    /// The tables of `[[key]]` headers (or of an array of inline tables).
    func tables(_ key: String) throws -> [TOMLTable] {
        guard let entry = table[key] else { return [] }
        guard case .array(let elements) = entry.value else { throw wrongKind(entry, "[[\(key)]] tables") }
        return try elements.map { element in
            guard case .table(let inner) = element else { throw wrongKind(entry, "[[\(key)]] tables") }
            return inner
        }
    }
}
