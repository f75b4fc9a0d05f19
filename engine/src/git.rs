//! Git history: every commit of the selected refs, each unique blob scanned
//! once, each finding attributed to the commit that introduced it at its path.
//!
//! The walk has four stages:
//! 1. discover the commits of the selected refs (minus `--since`'s
//!    ancestors), each owned by the first ref that reaches it;
//! 2. diff every commit's tree against its parents' (in parallel), keeping
//!    the (path, new blob, old blobs) changes: a path counts as changed by a
//!    merge only when it differs from every parent;
//! 3. scan the unique new blobs (in parallel);
//! 4. attribute: a match in a changed blob is a finding when no parent's
//!    version of that path holds the same (rule, secret). So a secret that
//!    stays through later edits of the file is one finding, and the same
//!    secret in another file is another.
//!
//! Results do not depend on the number of threads: every stage's output is
//! ordered by commit and path before it is used.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
};

use git2::{Oid, Repository, RepositoryOpenFlags};
use rayon::prelude::*;

use crate::{
    cache::{BlobCache, BlobId, CachedMatch, NoCache},
    config::{ScanConfig, BRANCH_CONFIG_FILES},
    error::EngineError,
    rules::Confidence,
    ruleset::{is_binary, BlobMatch, Policy, RuleSet},
    scan::{CommitMeta, Finding, ScanOptions, ScanProgress, ScanReport, ScanStats, ScanWarning},
    secret::Secret,
};

/// Which refs a history scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefSelection {
    /// Every local and remote-tracking branch.
    Branches,
    /// Every ref that leads to a commit: branches, tags, notes, others.
    AllRefs,
    /// One branch, by name.
    Branch(String),
    /// What a push brings (a pre-receive hook): the commits reachable from
    /// the pushed tips and from no existing ref.
    Pushed(PushedRefs),
}

/// The refs a push updates, as git's pre-receive hook is told them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRefs {
    /// `(ref name, new commit id)` of each updated ref (deletions left out).
    pub tips: Vec<(String, String)>,
    /// Object directories the repository's own does not list: git keeps a
    /// push's objects in a quarantine directory until the hook accepts it
    /// (`GIT_OBJECT_DIRECTORY`, `GIT_ALTERNATE_OBJECT_DIRECTORIES`).
    pub object_dirs: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct GitScanRequest {
    pub refs: RefSelection,
    /// Only commits not reachable from this one (incremental scans).
    pub since: Option<String>,
    /// Scan a shallow clone's partial history instead of refusing it.
    pub allow_shallow: bool,
}

impl Default for GitScanRequest {
    fn default() -> Self {
        GitScanRequest {
            refs: RefSelection::Branches,
            since: None,
            allow_shallow: false,
        }
    }
}

const ABSENT: u32 = u32::MAX;
const CHUNK_COMMITS: usize = 2048;

/// Opens `path` as a git repository when it is one: `Ok(None)` when it is
/// plainly not a repository (a directory to scan as files), an error when it
/// looks like one but cannot be opened.
pub fn open_repository(path: &Path) -> Result<Option<Repository>, EngineError> {
    match Repository::open_ext(
        path,
        RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&str>(),
    ) {
        Ok(repository) => Ok(Some(repository)),
        Err(error) => {
            let looks_like_git = path.join(".git").exists()
                || (path.join("HEAD").is_file() && path.join("objects").is_dir());
            if looks_like_git {
                Err(git_error(
                    path,
                    format!("not a valid git repository: {}", error.message()),
                ))
            } else {
                Ok(None)
            }
        }
    }
}

fn git_error(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Git {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Keeps libgit2's memory bounded whatever the repository's size.
fn limit_libgit2_memory() {
    // SAFETY: these calls only set global limits; they are safe to make
    // before any repository is opened by the scan.
    unsafe {
        let _ = git2::opts::set_mwindow_size(64 << 20);
        let _ = git2::opts::set_mwindow_mapped_limit(256 << 20);
    }
    // libgit2's object cache costs more than it saves here: every blob is
    // read once, and its eviction is slow once full (measured: 20 s instead
    // of 14 s on a 1 GB history). The pack's delta-base cache stays.
    git2::opts::enable_caching(false);
    // Re-hashing every object on read (SHA-1 with collision detection) was a
    // fifth of the scan's time; git itself does not verify on read either.
    git2::opts::strict_hash_verification(false);
}

/// Object reads on the hot path (trees while diffing, blobs while
/// scanning) go through gix: unlike libgit2, whose shared pack locks kept
/// the diff stage on about one core, its handles read packs in parallel.
/// Each scan thread keeps one handle (with its pack delta-base cache) for the
/// whole scan; the threads end with the scan's pool.
struct ObjectReader {
    git_dir: std::path::PathBuf,
    repository: gix::Repository,
    buffer: Vec<u8>,
}

thread_local! {
    static THREAD_READER: std::cell::RefCell<Option<ObjectReader>> = const { std::cell::RefCell::new(None) };
}

/// Runs `work` with this thread's object reader on the repository at `git_dir`.
fn with_object_reader<T>(
    git_dir: &Path,
    work: impl FnOnce(&mut ObjectReader) -> T,
) -> Result<T, String> {
    THREAD_READER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|reader| reader.git_dir != git_dir) {
            clear_tree_cache();
            let repository = gix::open_opts(git_dir, gix::open::Options::isolated())
                .map_err(|error| format!("cannot open with gix: {error}"))?;
            *slot = Some(ObjectReader {
                git_dir: git_dir.to_path_buf(),
                repository,
                buffer: Vec::new(),
            });
        }
        Ok(work(slot.as_mut().expect("set above")))
    })
}

fn blob_id(oid: Oid) -> BlobId {
    BlobId(
        oid.as_bytes()
            .try_into()
            .expect("a SHA-1 object id has 20 bytes"),
    )
}

fn to_gix(oid: Oid) -> gix::ObjectId {
    gix::ObjectId::from_bytes_or_panic(oid.as_bytes())
}

fn from_gix(oid: &gix::oid) -> Oid {
    Oid::from_bytes(oid.as_bytes()).expect("a SHA-1 object id has 20 bytes")
}

impl ObjectReader {
    /// The object's bytes, checked to be of `kind`.
    fn read(&mut self, oid: Oid, kind: gix::object::Kind) -> Result<&[u8], String> {
        use gix::objs::Find;
        let data = self
            .repository
            .objects
            .try_find(&to_gix(oid), &mut self.buffer)
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("object {oid} not found"))?;
        if data.kind != kind {
            return Err(format!("object {oid} is a {}, not a {kind}", data.kind));
        }
        Ok(data.data)
    }

    fn size(&self, oid: Oid) -> Result<u64, String> {
        use gix::objs::FindHeader;
        self.repository
            .objects
            .try_header(&to_gix(oid))
            .map_err(|error| error.to_string())?
            .map(|header| header.size)
            .ok_or_else(|| format!("object {oid} not found"))
    }
}

struct SelectedRef {
    name: String,
    tip: Oid,
}

/// Scans the history of the repository at `path` under `base` (the policy
/// before any branch's config file).
pub fn scan_repository(
    path: &Path,
    base: &Policy,
    request: &GitScanRequest,
    options: &ScanOptions,
    progress: &ScanProgress,
) -> Result<ScanReport, EngineError> {
    scan_repository_with_cache(path, base, request, options, progress, &NoCache)
}

/// [`scan_repository`] with a blob-result cache: blobs whose result under
/// the ruleset is known are not read, and the results of those read are
/// stored.
pub fn scan_repository_with_cache(
    path: &Path,
    base: &Policy,
    request: &GitScanRequest,
    options: &ScanOptions,
    progress: &ScanProgress,
    cache: &dyn BlobCache,
) -> Result<ScanReport, EngineError> {
    limit_libgit2_memory();
    let repository =
        open_repository(path)?.ok_or_else(|| git_error(path, "not a git repository"))?;
    // A push's quarantined objects: the original repository (refs, the
    // boundary walk) and a view of every object directory (the walk's
    // readers) both see them.
    let view = match &request.refs {
        RefSelection::Pushed(pushed) if !pushed.object_dirs.is_empty() => {
            let odb = repository.odb().map_err(|e| git_error(path, e.message()))?;
            for dir in &pushed.object_dirs {
                odb.add_disk_alternate(&dir.to_string_lossy())
                    .map_err(|e| {
                        git_error(
                            path,
                            format!("object directory {}: {}", dir.display(), e.message()),
                        )
                    })?;
            }
            Some(
                ObjectView::create(repository.path(), &pushed.object_dirs)
                    .map_err(|e| git_error(path, format!("cannot make an object view: {e}")))?,
            )
        }
        _ => None,
    };
    if repository.is_shallow() && !request.allow_shallow {
        return Err(git_error(
            path,
            "repository is shallow: its history is incomplete (run `git fetch --unshallow`, or pass --allow-shallow to scan what is there)",
        ));
    }
    let refs = select_refs(&repository, path, &request.refs)?;
    let hidden = match (&request.refs, &request.since) {
        (RefSelection::Pushed(_), _) => push_boundary(&repository, path, &refs)?,
        (_, Some(since)) => ancestors_of(&repository, path, since)?,
        (_, None) => HashSet::new(),
    };
    let mut report = ScanReport::default();

    // Group refs by the policy their config file gives them.
    let mut groups: BTreeMap<String, (Policy, Vec<usize>)> = BTreeMap::new();
    for (index, selected) in refs.iter().enumerate() {
        let policy = branch_policy(&repository, selected, base, &mut report.warnings)?;
        let key = crate::ruleset::policy_digest(&policy);
        groups
            .entry(key)
            .or_insert_with(|| (policy, Vec::new()))
            .1
            .push(index);
    }
    let pool = options.thread_pool()?;
    let mut seen_findings = HashSet::new();
    let mut findings = Vec::new();
    for (policy, ref_indices) in groups.into_values() {
        let ruleset = match &options.rulesets {
            Some(cache) => cache.get_or_build(&policy, options.prefilter)?,
            None => RuleSet::build_with(&policy, options.prefilter)?,
        };
        let group_refs: Vec<(usize, &SelectedRef)> =
            ref_indices.iter().map(|&i| (i, &refs[i])).collect();
        let walk = HistoryWalk {
            path,
            ruleset: &ruleset,
            options,
            progress,
            hidden: &hidden,
            cache,
        };
        let git_dir = view.as_ref().map_or(repository.path(), |view| view.path());
        let (group_findings, stats) =
            pool.install(|| walk.run(git_dir, &group_refs, &mut report.warnings))?;
        report.stats.merge(&stats);
        for (ref_index, finding) in group_findings {
            let key = (
                finding.commit.as_ref().map(|c| c.id.clone()),
                finding.path.clone(),
                finding.rule_id.clone(),
                finding.secret.clone(),
            );
            if seen_findings.insert(key) {
                findings.push((ref_index, finding));
            }
        }
    }
    findings.sort_by(|(ref_a, a), (ref_b, b)| {
        ref_a
            .cmp(ref_b)
            .then_with(|| commit_time(a).cmp(&commit_time(b)))
            .then_with(|| {
                a.commit
                    .as_ref()
                    .map(|c| &c.id)
                    .cmp(&b.commit.as_ref().map(|c| &c.id))
            })
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.line.cmp(&b.line))
            .then_with(|| a.rule_id.cmp(&b.rule_id))
    });
    report.findings = findings.into_iter().map(|(_, finding)| finding).collect();
    Ok(report)
}

/// The policy `branch` of the repository at `path` is scanned under: `base`
/// with the branch's config file applied (an unreadable or invalid config
/// file is ignored, as a scan ignores it). A missing branch gets `base`.
pub fn effective_policy(path: &Path, branch: &str, base: &Policy) -> Result<Policy, EngineError> {
    let repository =
        open_repository(path)?.ok_or_else(|| git_error(path, "not a git repository"))?;
    let refs = select_refs(&repository, path, &RefSelection::Branch(branch.to_string()))?;
    match refs.first() {
        Some(selected) => branch_policy(&repository, selected, base, &mut Vec::new()),
        None => Ok(base.clone()),
    }
}

fn commit_time(finding: &Finding) -> i64 {
    finding.commit.as_ref().map_or(0, |c| c.time)
}

fn select_refs(
    repository: &Repository,
    path: &Path,
    selection: &RefSelection,
) -> Result<Vec<SelectedRef>, EngineError> {
    if let RefSelection::Pushed(pushed) = selection {
        let mut refs = Vec::new();
        for (name, id) in &pushed.tips {
            let object = Oid::from_str(id)
                .and_then(|oid| repository.find_object(oid, None))
                .map_err(|e| git_error(path, format!("pushed {name} {id}: {}", e.message())))?;
            // An annotated tag counts as its commit; a tag of a tree or a
            // blob has no history to scan.
            let Ok(commit) = object.peel_to_commit() else {
                continue;
            };
            let name = name.strip_prefix("refs/heads/").unwrap_or(name).to_string();
            refs.push(SelectedRef {
                name,
                tip: commit.id(),
            });
        }
        return Ok(refs);
    }
    let head_name = repository
        .head()
        .ok()
        .filter(|head| head.is_branch())
        .and_then(|head| head.shorthand().ok().map(str::to_string));
    let mut refs: Vec<SelectedRef> = Vec::new();
    let references = repository
        .references()
        .map_err(|e| git_error(path, format!("cannot list refs: {}", e.message())))?;
    for reference in references {
        let Ok(reference) = reference else { continue };
        let Ok(full_name) = reference.name() else {
            continue;
        };
        let is_branch = reference.is_branch() || reference.is_remote();
        if reference.symbolic_target().ok().flatten().is_some() || full_name.ends_with("/HEAD") {
            continue;
        }
        let wanted = match selection {
            RefSelection::Branches => is_branch,
            RefSelection::AllRefs => true,
            RefSelection::Branch(name) => {
                is_branch
                    && (reference.shorthand().ok() == Some(name.as_str())
                        || full_name == format!("refs/heads/{name}")
                        || full_name == name.as_str())
            }
            RefSelection::Pushed(_) => false,
        };
        if !wanted {
            continue;
        }
        // Tags and other refs may point at tags or at non-commits: peel.
        let Ok(commit) = reference.peel_to_commit() else {
            continue;
        };
        let name = reference.shorthand().unwrap_or(full_name).to_string();
        refs.push(SelectedRef {
            name,
            tip: commit.id(),
        });
    }
    if let RefSelection::Branch(name) = selection {
        // A local branch wins over a remote-tracking one of the same short name.
        refs.sort_by_key(|r| r.name != *name);
        refs.truncate(1);
        if refs.is_empty() {
            return Err(git_error(path, format!("branch {name:?} not found")));
        }
    }
    let rank = |r: &SelectedRef| {
        (
            Some(&r.name) != head_name.as_ref(),
            r.name.contains('/') && head_name.as_deref() != Some(r.name.as_str()),
            r.name.clone(),
        )
    };
    refs.sort_by_key(rank);
    Ok(refs)
}

/// The commits a walk from the pushed `refs` stops at: the parents of the
/// new commits (reachable from a pushed tip and from no existing ref) that
/// are not new themselves. Each new commit is then diffed against its
/// parents as in a history scan, so a push and a later scan of its branch
/// attribute findings alike.
fn push_boundary(
    repository: &Repository,
    path: &Path,
    refs: &[SelectedRef],
) -> Result<HashSet<Oid>, EngineError> {
    let fail = |e: git2::Error| {
        git_error(
            path,
            format!("cannot list the pushed commits: {}", e.message()),
        )
    };
    let mut walk = repository.revwalk().map_err(fail)?;
    for selected in refs {
        walk.push(selected.tip).map_err(fail)?;
    }
    for reference in repository.references().map_err(fail)?.flatten() {
        if let Ok(commit) = reference.peel_to_commit() {
            walk.hide(commit.id()).map_err(fail)?;
        }
    }
    let mut new = HashSet::new();
    for oid in walk {
        new.insert(oid.map_err(fail)?);
    }
    let mut boundary = HashSet::new();
    for &oid in &new {
        let commit = repository.find_commit(oid).map_err(fail)?;
        boundary.extend(commit.parent_ids().filter(|parent| !new.contains(parent)));
    }
    // Pushed tips that exist already (a branch made at an old commit) bring
    // nothing new.
    boundary.extend(refs.iter().map(|r| r.tip).filter(|tip| !new.contains(tip)));
    Ok(boundary)
}

/// A git directory whose object store lists the repository's objects and
/// the given directories as alternates (libgit2 and gix both follow
/// `objects/info/alternates`); removed on drop.
struct ObjectView {
    dir: std::path::PathBuf,
}

impl ObjectView {
    fn create(git_dir: &Path, object_dirs: &[std::path::PathBuf]) -> std::io::Result<ObjectView> {
        use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "leakscan-objects-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, AtomicOrdering::Relaxed)
        ));
        let view = ObjectView { dir };
        std::fs::create_dir_all(view.dir.join("objects/info"))?;
        std::fs::create_dir_all(view.dir.join("objects/pack"))?;
        std::fs::create_dir_all(view.dir.join("refs/heads"))?;
        std::fs::write(view.dir.join("HEAD"), "ref: refs/heads/main\n")?;
        std::fs::write(
            view.dir.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        )?;
        let absolute =
            |dir: &Path| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut alternates = String::new();
        for dir in object_dirs
            .iter()
            .map(|d| absolute(d))
            .chain([absolute(&git_dir.join("objects"))])
        {
            alternates.push_str(&dir.to_string_lossy());
            alternates.push('\n');
        }
        std::fs::write(view.dir.join("objects/info/alternates"), alternates)?;
        Ok(view)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ObjectView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ancestors_of(
    repository: &Repository,
    path: &Path,
    since: &str,
) -> Result<HashSet<Oid>, EngineError> {
    let commit = repository
        .revparse_single(since)
        .and_then(|object| object.peel_to_commit())
        .map_err(|e| git_error(path, format!("--since {since:?}: {}", e.message())))?;
    let mut hidden = HashSet::new();
    let mut stack = vec![commit.id()];
    while let Some(oid) = stack.pop() {
        if !hidden.insert(oid) {
            continue;
        }
        let commit = repository
            .find_commit(oid)
            .map_err(|e| git_error(path, format!("commit {oid}: {}", e.message())))?;
        stack.extend(commit.parent_ids());
    }
    Ok(hidden)
}

fn branch_policy(
    repository: &Repository,
    selected: &SelectedRef,
    base: &Policy,
    warnings: &mut Vec<ScanWarning>,
) -> Result<Policy, EngineError> {
    let Ok(tree) = repository
        .find_commit(selected.tip)
        .and_then(|commit| commit.tree())
    else {
        return Ok(base.clone());
    };
    for file_name in BRANCH_CONFIG_FILES {
        let Some(entry) = tree.get_name(file_name) else {
            continue;
        };
        let Ok(blob) = repository.find_blob(entry.id()) else {
            continue;
        };
        let origin = format!("{}:{file_name}", selected.name);
        let parsed = std::str::from_utf8(blob.content())
            .map_err(|_| crate::error::ConfigError {
                origin: origin.clone(),
                message: "not UTF-8 text".into(),
            })
            .and_then(|text| ScanConfig::parse(&origin, text))
            .and_then(|config| config.apply(base));
        return match parsed {
            Ok(policy) => Ok(policy),
            Err(error) => {
                warnings.push(ScanWarning {
                    subject: origin,
                    message: format!("config file ignored: {}", error.message),
                });
                Ok(base.clone())
            }
        };
    }
    Ok(base.clone())
}

struct CommitNode {
    oid: Oid,
    tree: Oid,
    parents: Vec<Oid>,
    /// Index (in the scan's ref order) of the first ref that reaches it.
    ref_index: usize,
}

/// One path a commit changed relative to every parent.
struct Change {
    commit: u32,
    path: u32,
    new_blob: u32,
    /// The path's blob in each parent, `ABSENT` where it did not exist.
    old_blobs: Box<[u32]>,
}

struct HistoryWalk<'a> {
    path: &'a Path,
    ruleset: &'a RuleSet,
    options: &'a ScanOptions,
    progress: &'a ScanProgress,
    hidden: &'a HashSet<Oid>,
    cache: &'a dyn BlobCache,
}

/// Interned blob ids and paths of one walk.
#[derive(Default)]
struct Tables {
    blob_ids: Vec<Oid>,
    blob_index: HashMap<Oid, u32>,
    paths: Vec<Box<[u8]>>,
    path_index: HashMap<Box<[u8]>, u32>,
}

impl Tables {
    fn blob(&mut self, oid: Oid) -> u32 {
        if let Some(&index) = self.blob_index.get(&oid) {
            return index;
        }
        let index = self.blob_ids.len() as u32;
        self.blob_ids.push(oid);
        self.blob_index.insert(oid, index);
        index
    }

    fn path(&mut self, path: &[u8]) -> u32 {
        if let Some(&index) = self.path_index.get(path) {
            return index;
        }
        let index = self.paths.len() as u32;
        self.paths.push(path.into());
        self.path_index.insert(path.into(), index);
        index
    }
}

enum BlobResult {
    NotScanned,
    Clean,
    Matches(Box<[BlobMatch]>),
}

impl HistoryWalk<'_> {
    fn run(
        &self,
        git_dir: &Path,
        refs: &[(usize, &SelectedRef)],
        warnings: &mut Vec<ScanWarning>,
    ) -> Result<(Vec<(usize, Finding)>, ScanStats), EngineError> {
        let repository =
            &Repository::open(git_dir).map_err(|e| git_error(self.path, e.message()))?;
        let mut stats = ScanStats::default();
        let commits = self.discover_commits(repository, refs, warnings)?;
        stats.commits = commits.len() as u64;
        ScanProgress::add(&self.progress.commits, commits.len() as u64);
        // Every parent's tree, read up front for the few parents outside the
        // walk (the `--since` boundary).
        let mut parent_trees: HashMap<Oid, Oid> =
            commits.iter().map(|node| (node.oid, node.tree)).collect();
        for parent in commits.iter().flat_map(|node| &node.parents) {
            if !parent_trees.contains_key(parent) {
                let tree = repository
                    .find_commit(*parent)
                    .map_err(|e| git_error(self.path, format!("commit {parent}: {}", e.message())))?
                    .tree_id();
                parent_trees.insert(*parent, tree);
            }
        }

        // Stage 2: tree diffs, chunk by chunk to bound memory.
        let mut tables = Tables::default();
        let mut changes: Vec<Change> = Vec::new();
        for (chunk_number, chunk) in commits.chunks(CHUNK_COMMITS).enumerate() {
            if self.progress.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let base_index = chunk_number * CHUNK_COMMITS;
            let raw: Vec<Result<Vec<RawChange>, String>> = chunk
                .par_iter()
                .map(|node| {
                    with_object_reader(git_dir, |reader| {
                        commit_changes(reader, node, &parent_trees)
                    })
                    .and_then(|changes| changes)
                })
                .collect();
            ScanProgress::add(&self.progress.commits_diffed, chunk.len() as u64);
            for (offset, result) in raw.into_iter().enumerate() {
                let commit = (base_index + offset) as u32;
                match result {
                    Ok(raw_changes) => {
                        for raw_change in raw_changes {
                            let path = tables.path(&raw_change.path);
                            let new_blob = tables.blob(raw_change.new_blob);
                            let old_blobs = raw_change
                                .old_blobs
                                .iter()
                                .map(|old| old.map_or(ABSENT, |oid| tables.blob(oid)))
                                .collect();
                            changes.push(Change {
                                commit,
                                path,
                                new_blob,
                                old_blobs,
                            });
                        }
                    }
                    Err(message) => warnings.push(ScanWarning {
                        subject: format!("commit {}", commits[commit as usize].oid),
                        message: format!("cannot read its trees, skipped: {message}"),
                    }),
                }
            }
        }
        // Stage 3: scan each new blob once.
        let mut to_scan: Vec<u32> = changes.iter().map(|change| change.new_blob).collect();
        to_scan.sort_unstable();
        to_scan.dedup();
        ScanProgress::add(&self.progress.blobs_total, to_scan.len() as u64);
        let mut results: Vec<BlobResult> = (0..tables.blob_ids.len())
            .map(|_| BlobResult::NotScanned)
            .collect();
        let to_scan = self.use_cached_results(&tables.blob_ids, &to_scan, &mut results, &mut stats);
        let scanned = self.scan_blobs(git_dir, &tables.blob_ids, &to_scan)?;
        if self.progress.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        self.store_results(&tables.blob_ids, &to_scan, &scanned);
        for (blob, outcome) in to_scan.iter().zip(scanned) {
            results[*blob as usize] = self.record_outcome(
                outcome,
                &tables.blob_ids[*blob as usize],
                &mut stats,
                warnings,
            );
        }
        // Stage 4: attribution.
        let mut findings = Vec::new();
        let mut meta_cache: HashMap<u32, CommitMeta> = HashMap::new();
        let path_only: Vec<_> = self.ruleset.path_only_rules().collect();
        let mut scanner = self.ruleset.scanner()?;
        for change in &changes {
            let has_matches = matches!(results[change.new_blob as usize], BlobResult::Matches(_));
            let is_addition = change.old_blobs.iter().all(|&old| old == ABSENT);
            let path_rule_applies = is_addition && !path_only.is_empty();
            if !has_matches && !path_rule_applies {
                continue;
            }
            let path = &tables.paths[change.path as usize];
            if self.ruleset.path_allowed(path) {
                continue;
            }
            let mut introduced: Vec<(crate::RuleIdx, Option<u32>, Secret, Confidence)> = Vec::new();
            if is_addition {
                for &rule in &path_only {
                    if self.ruleset.rule(rule).applies_to_path(path) {
                        let confidence = self.ruleset.rule(rule).confidence;
                        introduced.push((rule, None, Secret::new(path), confidence));
                    }
                }
            }
            if has_matches {
                // Old versions this change is compared with must be scanned too
                // (they may come from outside the walk, e.g. before --since).
                for &old in change.old_blobs.iter().filter(|&&old| old != ABSENT) {
                    if matches!(results[old as usize], BlobResult::NotScanned) {
                        let outcome = with_object_reader(git_dir, |reader| {
                            read_and_scan_blob(
                                reader,
                                &mut scanner,
                                tables.blob_ids[old as usize],
                                self.options.max_blob_size,
                            )
                        })
                        .unwrap_or_else(BlobOutcome::Unreadable);
                        results[old as usize] = self.record_outcome(
                            outcome,
                            &tables.blob_ids[old as usize],
                            &mut stats,
                            warnings,
                        );
                    }
                }
                let BlobResult::Matches(new_matches) = &results[change.new_blob as usize] else {
                    unreachable!()
                };
                let mut seen: HashSet<(crate::RuleIdx, &Secret)> = HashSet::new();
                for found in new_matches.iter() {
                    if !self.ruleset.rule(found.rule).applies_to_path(path)
                        || self.ruleset.match_allowed(path, &found.context)
                        || !seen.insert((found.rule, &found.secret))
                    {
                        continue;
                    }
                    let in_parent =
                        change
                            .old_blobs
                            .iter()
                            .any(|&old| match results.get(old as usize) {
                                Some(BlobResult::Matches(old_matches)) => old_matches
                                    .iter()
                                    .any(|m| m.rule == found.rule && m.secret == found.secret),
                                _ => false,
                            });
                    if !in_parent {
                        introduced.push((
                            found.rule,
                            Some(found.line),
                            found.secret.clone(),
                            found.confidence,
                        ));
                    }
                }
            }
            if introduced.is_empty() {
                continue;
            }
            let node = &commits[change.commit as usize];
            let meta = match meta_cache.get(&change.commit) {
                Some(meta) => meta.clone(),
                None => {
                    let meta = commit_meta(repository, node.oid)
                        .map_err(|e| git_error(self.path, e.message()))?;
                    meta_cache.insert(change.commit, meta.clone());
                    meta
                }
            };
            let path_text = String::from_utf8_lossy(path).into_owned();
            for (rule_index, line, secret, confidence) in introduced {
                let rule = self.ruleset.rule(rule_index);
                ScanProgress::add(&self.progress.findings, 1);
                findings.push((
                    node.ref_index,
                    Finding {
                        rule_id: rule.id.clone(),
                        rule_name: rule.name.clone(),
                        severity: rule.severity,
                        confidence,
                        path: path_text.clone(),
                        line,
                        commit: Some(meta.clone()),
                        branch: Some(
                            refs.iter()
                                .find(|(i, _)| *i == node.ref_index)
                                .map(|(_, r)| r.name.clone())
                                .unwrap_or_default(),
                        ),
                        secret,
                    },
                ));
            }
        }
        Ok((findings, stats))
    }

    fn record_outcome(
        &self,
        outcome: BlobOutcome,
        oid: &Oid,
        stats: &mut ScanStats,
        warnings: &mut Vec<ScanWarning>,
    ) -> BlobResult {
        match outcome {
            BlobOutcome::Scanned { bytes, mut matches } => {
                stats.blobs_scanned += 1;
                stats.bytes_scanned += bytes;
                self.ruleset.finish(&mut matches);
                if matches.is_empty() {
                    BlobResult::Clean
                } else {
                    BlobResult::Matches(matches.into_boxed_slice())
                }
            }
            BlobOutcome::Binary => {
                stats.skipped_binary += 1;
                BlobResult::Clean
            }
            BlobOutcome::TooLarge => {
                stats.skipped_too_large += 1;
                BlobResult::Clean
            }
            BlobOutcome::Unreadable(message) => {
                stats.unreadable += 1;
                warnings.push(ScanWarning {
                    subject: format!("blob {oid}"),
                    message: format!("cannot read, skipped: {message}"),
                });
                BlobResult::Clean
            }
        }
    }

    /// Fills `results` from the cache; returns the blobs still to read.
    fn use_cached_results(
        &self,
        blob_ids: &[Oid],
        to_scan: &[u32],
        results: &mut [BlobResult],
        stats: &mut ScanStats,
    ) -> Vec<u32> {
        let ids: Vec<BlobId> = to_scan
            .iter()
            .map(|&blob| blob_id(blob_ids[blob as usize]))
            .collect();
        let known = self.cache.lookup(self.ruleset.detection_digest(), &ids);
        let rule_index: HashMap<&str, crate::RuleIdx> = self
            .ruleset
            .rules()
            .iter()
            .enumerate()
            .map(|(index, rule)| (rule.id.as_str(), crate::RuleIdx(index as u32)))
            .collect();
        let mut unknown = Vec::new();
        for (&blob, cached) in to_scan
            .iter()
            .zip(known.into_iter().chain(std::iter::repeat(None)))
        {
            let Some(cached) = cached else {
                unknown.push(blob);
                continue;
            };
            stats.blobs_from_cache += 1;
            ScanProgress::add(&self.progress.blobs_scanned, 1);
            ScanProgress::add(&self.progress.blobs_from_cache, 1);
            let mut matches: Vec<BlobMatch> = cached
                .into_iter()
                .filter_map(|m| {
                    let rule = *rule_index.get(m.rule_id.as_str())?;
                    Some(BlobMatch {
                        rule,
                        line: m.line,
                        start: usize::try_from(m.start).ok()?,
                        end: usize::try_from(m.end).ok()?,
                        confidence: self.ruleset.confidence_of(rule, m.secret.expose()),
                        secret: m.secret,
                        context: m.context.into_boxed_slice(),
                    })
                })
                .collect();
            self.ruleset.finish(&mut matches);
            results[blob as usize] = if matches.is_empty() {
                BlobResult::Clean
            } else {
                BlobResult::Matches(matches.into_boxed_slice())
            };
        }
        unknown
    }

    /// Stores the results of the blobs this scan read, binary ones as clean
    /// (not those it skipped for their size: the size limit is not part of
    /// the digest).
    fn store_results(&self, blob_ids: &[Oid], scanned_blobs: &[u32], outcomes: &[BlobOutcome]) {
        let results: Vec<(BlobId, Vec<CachedMatch>)> = scanned_blobs
            .iter()
            .zip(outcomes)
            .filter_map(|(&blob, outcome)| match outcome {
                BlobOutcome::Scanned { matches, .. } => Some((
                    blob_id(blob_ids[blob as usize]),
                    matches
                        .iter()
                        .map(|m| CachedMatch {
                            rule_id: self.ruleset.rule(m.rule).id.clone(),
                            line: m.line,
                            start: m.start as u64,
                            end: m.end as u64,
                            secret: m.secret.clone(),
                            context: m.context.to_vec(),
                        })
                        .collect(),
                )),
                // Binary whatever the rules and the size limit: no findings.
                BlobOutcome::Binary => Some((blob_id(blob_ids[blob as usize]), Vec::new())),
                BlobOutcome::TooLarge | BlobOutcome::Unreadable(_) => None,
            })
            .collect();
        if !results.is_empty() {
            self.cache.store(self.ruleset.detection_digest(), results);
        }
    }

    fn discover_commits(
        &self,
        repository: &Repository,
        refs: &[(usize, &SelectedRef)],
        warnings: &mut Vec<ScanWarning>,
    ) -> Result<Vec<CommitNode>, EngineError> {
        let mut seen: HashSet<Oid> = HashSet::new();
        let mut commits = Vec::new();
        for &(ref_index, selected) in refs {
            let mut stack = vec![selected.tip];
            while let Some(oid) = stack.pop() {
                if self.hidden.contains(&oid) || !seen.insert(oid) {
                    continue;
                }
                let commit = match repository.find_commit(oid) {
                    Ok(commit) => commit,
                    Err(error) => {
                        warnings.push(ScanWarning {
                            subject: format!("commit {oid}"),
                            message: format!(
                                "cannot read, its history is skipped: {}",
                                error.message()
                            ),
                        });
                        continue;
                    }
                };
                let parents: Vec<Oid> = commit.parent_ids().collect();
                stack.extend(parents.iter().rev().copied());
                commits.push(CommitNode {
                    oid,
                    tree: commit.tree_id(),
                    parents,
                    ref_index,
                });
            }
        }
        Ok(commits)
    }

    fn scan_blobs(
        &self,
        git_dir: &Path,
        blob_ids: &[Oid],
        to_scan: &[u32],
    ) -> Result<Vec<BlobOutcome>, EngineError> {
        // Check the ruleset builds a scanner before fanning out.
        drop(self.ruleset.scanner()?);
        let max_size = self.options.max_blob_size;
        let progress = self.progress;
        Ok(to_scan
            .par_iter()
            .map_init(
                || self.ruleset.scanner().ok(),
                |scanner, &blob| {
                    if progress.is_cancelled() {
                        return BlobOutcome::Unreadable("scan cancelled".into());
                    }
                    let Some(scanner) = scanner.as_mut() else {
                        return BlobOutcome::Unreadable("cannot build a scanner".into());
                    };
                    let outcome = with_object_reader(git_dir, |reader| {
                        read_and_scan_blob(reader, scanner, blob_ids[blob as usize], max_size)
                    })
                    .unwrap_or_else(BlobOutcome::Unreadable);
                    ScanProgress::add(&progress.blobs_scanned, 1);
                    if let BlobOutcome::Scanned { bytes, .. } = &outcome {
                        ScanProgress::add(&progress.bytes_scanned, *bytes);
                    }
                    outcome
                },
            )
            .collect())
    }
}

enum BlobOutcome {
    /// Read and scanned: its raw matches ([`crate::Scanner::scan_raw`]).
    Scanned {
        bytes: u64,
        matches: Vec<BlobMatch>,
    },
    Binary,
    TooLarge,
    Unreadable(String),
}

fn read_and_scan_blob(
    reader: &mut ObjectReader,
    scanner: &mut crate::Scanner<'_>,
    oid: Oid,
    max_size: u64,
) -> BlobOutcome {
    match reader.size(oid) {
        Ok(size) if size > max_size => return BlobOutcome::TooLarge,
        Ok(_) => {}
        Err(message) => return BlobOutcome::Unreadable(message),
    }
    let data = match reader.read(oid, gix::object::Kind::Blob) {
        Ok(data) => data,
        Err(message) => return BlobOutcome::Unreadable(message),
    };
    if is_binary(data) {
        return BlobOutcome::Binary;
    }
    BlobOutcome::Scanned {
        bytes: data.len() as u64,
        matches: scanner.scan_raw(data).to_vec(),
    }
}

fn commit_meta(repository: &Repository, oid: Oid) -> Result<CommitMeta, git2::Error> {
    let commit = repository.find_commit(oid)?;
    let author = commit.author();
    Ok(CommitMeta {
        id: oid.to_string(),
        author: String::from_utf8_lossy(author.name_bytes()).into_owned(),
        author_email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
        time: author.when().seconds(),
        offset_minutes: author.when().offset_minutes(),
    })
}

struct RawChange {
    path: Vec<u8>,
    new_blob: Oid,
    old_blobs: Vec<Option<Oid>>,
}

/// The blob paths `node` changed relative to every one of its parents.
fn commit_changes(
    reader: &mut ObjectReader,
    node: &CommitNode,
    parent_trees: &HashMap<Oid, Oid>,
) -> Result<Vec<RawChange>, String> {
    let parent_tree = |parent: &Oid| -> Result<Oid, String> {
        parent_trees
            .get(parent)
            .copied()
            .ok_or_else(|| format!("parent commit {parent} not read"))
    };
    if node.parents.is_empty() {
        let mut out = Vec::new();
        diff_trees(reader, None, node.tree, &mut Vec::new(), &mut out)?;
        return Ok(out
            .into_iter()
            .map(|(path, new_blob, _)| RawChange {
                path,
                new_blob,
                old_blobs: vec![None],
            })
            .collect());
    }
    let first_tree = parent_tree(&node.parents[0])?;
    let mut first = Vec::new();
    diff_trees(
        reader,
        Some(first_tree),
        node.tree,
        &mut Vec::new(),
        &mut first,
    )?;
    let mut changes: Vec<RawChange> = first
        .into_iter()
        .map(|(path, new_blob, old)| RawChange {
            path,
            new_blob,
            old_blobs: vec![old],
        })
        .collect();
    for parent in &node.parents[1..] {
        if changes.is_empty() {
            break;
        }
        let tree = parent_tree(parent)?;
        let mut other = Vec::new();
        diff_trees(reader, Some(tree), node.tree, &mut Vec::new(), &mut other)?;
        let by_path: HashMap<Vec<u8>, Option<Oid>> = other
            .into_iter()
            .map(|(path, _, old)| (path, old))
            .collect();
        changes.retain_mut(|change| match by_path.get(&change.path) {
            Some(old) => {
                change.old_blobs.push(*old);
                true
            }
            // Same as in this parent: the merge introduced nothing here.
            None => false,
        });
    }
    Ok(changes)
}

/// Git's tree order: names compare bytewise, a tree's name as if it ended in '/'.
fn git_order(a: &[u8], a_tree: bool, b: &[u8], b_tree: bool) -> Ordering {
    let common = a.len().min(b.len());
    match a[..common].cmp(&b[..common]) {
        Ordering::Equal => {
            let next = |name: &[u8], tree: bool| {
                name.get(common)
                    .copied()
                    .unwrap_or(if tree { b'/' } else { 0 })
            };
            next(a, a_tree)
                .cmp(&next(b, b_tree))
                .then(a.len().cmp(&b.len()))
        }
        other => other,
    }
}

struct Entry {
    name: Vec<u8>,
    oid: Oid,
    kind: EntryKind,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum EntryKind {
    Tree,
    Blob,
    Other,
}

/// Parsed trees recently read by this thread. A commit's trees are read
/// again as the parent trees of the next commit the thread diffs (commits
/// come in contiguous child-to-parent runs), so a small two-generation cache
/// halves tree reads. Bounded: at most `2 * TREE_CACHE_GENERATION` trees.
struct TreeCache {
    current: HashMap<Oid, std::rc::Rc<[Entry]>>,
    previous: HashMap<Oid, std::rc::Rc<[Entry]>>,
}

const TREE_CACHE_GENERATION: usize = 4096;

thread_local! {
    static TREE_CACHE: std::cell::RefCell<TreeCache> = std::cell::RefCell::new(TreeCache {
        current: HashMap::new(),
        previous: HashMap::new(),
    });
}

fn tree_entries(reader: &mut ObjectReader, oid: Oid) -> Result<std::rc::Rc<[Entry]>, String> {
    let cached = TREE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(entries) = cache.current.get(&oid) {
            return Some(entries.clone());
        }
        let entries = cache.previous.remove(&oid)?;
        cache.current.insert(oid, entries.clone());
        Some(entries)
    });
    if let Some(entries) = cached {
        return Ok(entries);
    }
    let entries = read_tree_entries(reader, oid)?;
    TREE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.current.len() >= TREE_CACHE_GENERATION {
            cache.previous = std::mem::take(&mut cache.current);
        }
        cache.current.insert(oid, entries.clone());
    });
    Ok(entries)
}

/// Forgets this thread's cached trees (they belong to one repository).
fn clear_tree_cache() {
    TREE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        cache.current = HashMap::new();
        cache.previous = HashMap::new();
    });
}

fn read_tree_entries(reader: &mut ObjectReader, oid: Oid) -> Result<std::rc::Rc<[Entry]>, String> {
    let data = reader.read(oid, gix::object::Kind::Tree)?;
    gix::objs::TreeRefIter::from_bytes(data, gix::hash::Kind::Sha1)
        .map(|entry| {
            let entry = entry.map_err(|error| format!("tree {oid}: {error}"))?;
            let kind = if entry.mode.is_tree() {
                EntryKind::Tree
            } else if entry.mode.is_blob() {
                // Symbolic links and submodules hold no file content.
                EntryKind::Blob
            } else {
                EntryKind::Other
            };
            Ok(Entry {
                name: entry.filename.to_vec(),
                oid: from_gix(entry.oid),
                kind,
            })
        })
        .collect()
}

/// Appends (path, new blob, old blob) for every blob in `new` that is not
/// the same blob at the same path in `old`; identical subtrees are skipped.
fn diff_trees(
    reader: &mut ObjectReader,
    old: Option<Oid>,
    new: Oid,
    prefix: &mut Vec<u8>,
    out: &mut Vec<(Vec<u8>, Oid, Option<Oid>)>,
) -> Result<(), String> {
    if old == Some(new) {
        return Ok(());
    }
    let new_entries = tree_entries(reader, new)?;
    let old_entries = match old {
        Some(old) => tree_entries(reader, old)?,
        None => std::rc::Rc::from(Vec::new()),
    };
    let mut old_position = 0;
    for entry in new_entries.iter() {
        if entry.kind == EntryKind::Other {
            continue;
        }
        let is_tree = entry.kind == EntryKind::Tree;
        // Advance through old entries ordered before this one.
        let mut counterpart = None;
        while old_position < old_entries.len() {
            let candidate = &old_entries[old_position];
            match git_order(
                &candidate.name,
                candidate.kind == EntryKind::Tree,
                &entry.name,
                is_tree,
            ) {
                Ordering::Less => old_position += 1,
                Ordering::Equal => {
                    if candidate.kind == entry.kind {
                        counterpart = Some(candidate.oid);
                    }
                    old_position += 1;
                    break;
                }
                Ordering::Greater => break,
            }
        }
        if counterpart == Some(entry.oid) {
            continue;
        }
        let length = prefix.len();
        prefix.extend_from_slice(&entry.name);
        if is_tree {
            prefix.push(b'/');
            diff_trees(reader, counterpart, entry.oid, prefix, out)?;
        } else {
            out.push((prefix.clone(), entry.oid, counterpart));
        }
        prefix.truncate(length);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_order_puts_trees_after_same_named_files_with_suffixes() {
        // Git sorts "a.txt" < "a/" (tree) < "a0" because '.' < '/' < '0'.
        assert_eq!(git_order(b"a.txt", false, b"a", true), Ordering::Less);
        assert_eq!(git_order(b"a", true, b"a0", false), Ordering::Less);
        assert_eq!(git_order(b"a", false, b"a", true), Ordering::Less);
        assert_eq!(git_order(b"b", false, b"b", false), Ordering::Equal);
    }
}
