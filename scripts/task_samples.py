#!/usr/bin/env python3
"""Writes the small hand-written sample data of three task bundles (standard library only):

- tasks/trialpanorama-study-search/: a study corpus (corpus.jsonl, {"pmid", "title", "year",
  "abstract"}; the format `medrl index build` and search grants read) and review rows in TrialPanorama's VERL layout (data/*.jsonl; train is then
  converted to Parquet with `medrl data convert --input data/train.jsonl --output
  data/train.parquet`);
- tasks/medical-o1/data/*.jsonl: HuatuoGPT-o1-style verifiable questions as medrl examples
  (ground_truth {"answer": ...}; an assistant turn in the SFT target format);
- tasks/medical-dialogue/data/dialogue_test.json: a held-out test split in the sharegpt layout
  of the existing files.

The texts are written for these samples (no real trial records; PMIDs are made up). Rerunning
the script rewrites the same files.
"""
import json
import os
import random

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# Study search: each review has a topic, its relevant trials and a good query.
REVIEWS = [
    ("metformin", "type 2 diabetes", "glycaemic control", "metformin diabetes randomized"),
    ("SGLT2 inhibitor", "heart failure", "hospitalisation for heart failure", "SGLT2 heart failure"),
    ("statin", "primary prevention of cardiovascular disease", "major cardiovascular events", "statin primary prevention"),
    ("early rhythm control", "atrial fibrillation", "stroke and cardiovascular death", "rhythm control atrial fibrillation"),
    ("dexamethasone", "postoperative nausea and vomiting", "nausea within 24 hours", "dexamethasone postoperative nausea"),
    ("supervised exercise", "knee osteoarthritis", "pain and function", "exercise knee osteoarthritis"),
    ("internet-delivered CBT", "major depressive disorder", "depressive symptoms", "internet CBT depression"),
    ("short-course antibiotics", "community-acquired pneumonia", "clinical cure", "short-course antibiotics pneumonia"),
    ("transarterial chemoembolization", "intermediate-stage hepatocellular carcinoma", "overall survival", "chemoembolization hepatocellular carcinoma"),
    ("atezolizumab plus bevacizumab", "unresectable hepatocellular carcinoma", "overall survival", "atezolizumab bevacizumab hepatocellular"),
    ("tranexamic acid", "postpartum haemorrhage", "death due to bleeding", "tranexamic acid postpartum haemorrhage"),
    ("vitamin D supplementation", "prevention of fractures in older adults", "fracture incidence", "vitamin D fractures older adults"),
    ("proton pump inhibitor", "peptic ulcer rebleeding", "rebleeding", "proton pump inhibitor ulcer rebleeding"),
    ("radiofrequency ablation", "small hepatocellular carcinoma", "recurrence-free survival", "radiofrequency ablation small hepatocellular"),
    ("mindfulness-based stress reduction", "chronic low back pain", "pain intensity", "mindfulness chronic low back pain"),
    ("influenza vaccination", "patients after myocardial infarction", "death and cardiovascular events", "influenza vaccination myocardial infarction"),
    ("intensive blood pressure lowering", "acute intracerebral haemorrhage", "functional outcome", "intensive blood pressure intracerebral haemorrhage"),
    ("high-flow nasal oxygen", "acute hypoxaemic respiratory failure", "intubation", "high-flow nasal oxygen respiratory failure"),
    ("zinc supplementation", "acute diarrhoea in children", "duration of diarrhoea", "zinc diarrhoea children"),
    ("cognitive training", "mild cognitive impairment", "cognitive function", "cognitive training mild cognitive impairment"),
    ("iron supplementation", "anaemia in pregnancy", "haemoglobin at delivery", "iron supplementation anaemia pregnancy"),
    ("continuous glucose monitoring", "type 1 diabetes", "HbA1c", "continuous glucose monitoring type 1 diabetes"),
    ("corticosteroids", "severe community-acquired pneumonia", "mortality", "corticosteroids severe pneumonia"),
    ("acupuncture", "chronic tension-type headache", "headache days", "acupuncture tension headache"),
]

DESIGNS = ["a randomized controlled trial", "a double-blind randomized trial", "a multicentre randomized trial", "an open-label randomized trial", "a pragmatic randomized trial"]
DISTRACT = [
    "Cost-effectiveness of hospital discharge planning: an observational cohort",
    "Prevalence of hypertension in rural communities: a cross-sectional survey",
    "Genetic determinants of drug metabolism: a genome-wide association study",
    "Patient satisfaction with telemedicine consultations: a qualitative study",
    "Trends in antibiotic prescribing in primary care, 2000-2020",
    "Burnout among intensive care nurses: a national survey",
    "Imaging features of benign liver lesions: a case series",
    "Air pollution and asthma admissions: a time-series analysis",
]


def study_search():
    rng = random.Random(11)
    task = os.path.join(ROOT, "tasks", "trialpanorama-study-search")
    os.makedirs(os.path.join(task, "data"), exist_ok=True)
    corpus, rows = [], []
    pmid = 31000000
    for r, (intervention, condition, outcome, query) in enumerate(REVIEWS):
        relevant = []
        for k in range(rng.randint(3, 5)):
            pmid += rng.randint(7, 900)
            year = rng.randint(2003, 2023)
            corpus.append({
                "pmid": str(pmid),
                "title": f"{intervention.capitalize()} versus control for {condition}: {DESIGNS[k % len(DESIGNS)]}",
                "year": year,
                "abstract": f"Adults with {condition} were randomly assigned to {intervention} or control; the primary outcome was {outcome}.",
            })
            relevant.append(str(pmid))
        review_pmid = str(pmid + 5000)
        background = f"{condition.capitalize()} is common and its treatment options differ in effectiveness."
        objectives = f"To assess the effects of {intervention} on {outcome} in people with {condition}."
        criteria = f"Randomized controlled trials comparing {intervention} with placebo, usual care or no treatment in people with {condition}."
        prompt = (
            "You are an expert in systematic reviews. Write a PubMed search query that retrieves the randomized trials "
            "eligible for this review. Return only the query between <answer> and </answer>, with no reasoning.\n\n"
            f"Background: {background}\nObjectives: {objectives}\nSelection criteria: {criteria}\n\n<answer>"
        )
        rows.append({"prompt": prompt, "relevant": relevant, "review_pmid": review_pmid, "query": query})
    for d in DISTRACT:
        pmid += rng.randint(7, 900)
        corpus.append({"pmid": str(pmid), "title": d, "abstract": ""})
    rng.shuffle(corpus)
    with open(os.path.join(task, "corpus.jsonl"), "w") as f:
        for c in corpus:
            f.write(json.dumps(c) + "\n")
    splits = {"train": rows[:16], "validation": rows[16:20], "test": rows[20:]}
    for split, rs in splits.items():
        with open(os.path.join(task, "data", f"{split}.jsonl"), "w") as f:
            for i, r in enumerate(rs):
                f.write(json.dumps({
                    "data_source": f"study_search_{split}",
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "ability": "study_search",
                    "reward_model": {"style": "rule", "ground_truth": {"relevant_pmids": r["relevant"], "review_pmid": r["review_pmid"]}},
                    "extra_info": {"split": split, "index": i, "reference_query": r["query"] + "</answer>"},
                }) + "\n")


# HuatuoGPT-o1-style verifiable problems: (question, answer, short reasoning).
O1 = [
    ("A 24-year-old woman has fatigue, cold intolerance, weight gain and a raised TSH with low free T4. What is the most likely diagnosis?", "Primary hypothyroidism", "Raised TSH with low free T4 points to failure of the thyroid gland itself."),
    ("Which electrolyte abnormality is classically caused by loop diuretics such as furosemide?", "Hypokalaemia", "Loop diuretics increase distal sodium delivery and potassium secretion."),
    ("A patient on warfarin has an INR of 9 with no bleeding. Besides withholding warfarin, what oral agent is given?", "Vitamin K", "Low-dose oral vitamin K lowers a very high INR without bleeding."),
    ("What is the first-line drug treatment for anaphylaxis?", "Intramuscular adrenaline (epinephrine)", "Adrenaline reverses vasodilation and bronchospasm and is given intramuscularly first."),
    ("A child has a barking cough, inspiratory stridor and a steeple sign on neck X-ray. What is the diagnosis?", "Croup (laryngotracheobronchitis)", "The steeple sign shows subglottic narrowing typical of croup."),
    ("Which antibody is most specific for systemic lupus erythematosus?", "Anti-double-stranded DNA (and anti-Smith) antibodies", "ANA is sensitive; anti-dsDNA and anti-Sm are specific."),
    ("What is the antidote for paracetamol (acetaminophen) overdose?", "N-acetylcysteine", "N-acetylcysteine restores glutathione to detoxify NAPQI."),
    ("A 60-year-old smoker has painless jaundice and a palpable gallbladder. What is the most likely cause?", "Carcinoma of the head of the pancreas", "Courvoisier's sign suggests malignant obstruction of the distal bile duct."),
    ("Which vitamin deficiency causes Wernicke encephalopathy?", "Thiamine (vitamin B1)", "Thiamine deficiency causes confusion, ophthalmoplegia and ataxia."),
    ("What is the most common cause of community-acquired pneumonia in adults?", "Streptococcus pneumoniae", "Pneumococcus remains the leading bacterial cause."),
    ("A patient has ST elevation in leads II, III and aVF. Which coronary artery is most likely occluded?", "Right coronary artery", "Inferior ST elevation usually reflects right coronary artery occlusion."),
    ("Which tumour marker is used for surveillance of hepatocellular carcinoma?", "Alpha-fetoprotein (AFP)", "AFP is raised in many hepatocellular carcinomas and is used with ultrasound."),
    ("What is the drug of choice for absence seizures in children?", "Ethosuximide", "Ethosuximide blocks T-type calcium channels in thalamic neurons."),
    ("A woman has galactorrhoea, amenorrhoea and a pituitary microadenoma. What is first-line treatment?", "A dopamine agonist such as cabergoline", "Dopamine agonists shrink prolactinomas and lower prolactin."),
    ("Which organism causes pseudomembranous colitis after antibiotic use?", "Clostridioides difficile", "Antibiotics disrupt gut flora, allowing C. difficile toxin-mediated colitis."),
    ("What is the most common inherited cause of venous thrombosis in people of European descent?", "Factor V Leiden", "Factor V Leiden resists inactivation by activated protein C."),
    ("Which heart valve is most often affected in infective endocarditis among injection drug users?", "The tricuspid valve", "Right-sided valves are exposed first to injected bacteria."),
    ("A patient with cirrhosis becomes confused with asterixis. Which oral drug reduces ammonia absorption?", "Lactulose", "Lactulose acidifies the colon and traps ammonia as ammonium."),
    ("What is the preferred imaging test for suspected acute pulmonary embolism in a stable patient?", "CT pulmonary angiography", "CTPA directly shows clots in the pulmonary arteries."),
    ("Which drug class is first-line for heart failure with reduced ejection fraction alongside beta-blockers?", "ACE inhibitors or ARNI (sacubitril/valsartan)", "Renin-angiotensin blockade lowers mortality in HFrEF."),
    ("A newborn has bilious vomiting in the first day of life and a double-bubble sign. What is the diagnosis?", "Duodenal atresia", "The double-bubble sign shows a dilated stomach and duodenum."),
    ("What is the main mechanism of action of metformin?", "It decreases hepatic gluconeogenesis", "Metformin mainly suppresses glucose output from the liver."),
    ("Which infection is the most common cause of cervical cancer?", "Human papillomavirus (types 16 and 18)", "High-risk HPV types drive most cervical cancers."),
    ("A patient has hypercalcaemia, raised PTH and kidney stones. What is the most likely diagnosis?", "Primary hyperparathyroidism", "High calcium with inappropriately high PTH indicates primary hyperparathyroidism."),
    ("What is the first-line antibiotic for uncomplicated cystitis in non-pregnant women in many guidelines?", "Nitrofurantoin", "Nitrofurantoin concentrates in urine and has low resistance rates."),
    ("Which nerve is injured in wrist drop after a mid-shaft humeral fracture?", "Radial nerve", "The radial nerve runs in the spiral groove of the humerus."),
    ("A patient has bilateral hilar lymphadenopathy, erythema nodosum and raised ACE. What is the diagnosis?", "Sarcoidosis", "Löfgren syndrome is an acute presentation of sarcoidosis."),
    ("What is the treatment of choice for a tension pneumothorax before a chest drain?", "Immediate needle decompression", "Needle decompression relieves the pressure that compromises circulation."),
    ("Which hormone is deficient in diabetes insipidus of central origin?", "Antidiuretic hormone (vasopressin)", "Central DI results from too little ADH release."),
    ("What is the most likely diagnosis in an elderly patient with temporal headache, jaw claudication and raised ESR?", "Giant cell arteritis", "These features are classic for giant cell arteritis and need urgent steroids."),
    ("Which drug reverses the effect of heparin?", "Protamine sulfate", "Protamine binds and neutralises heparin."),
    ("A patient has microcytic anaemia with low ferritin. What is the diagnosis?", "Iron deficiency anaemia", "Low ferritin is the most specific test for iron deficiency."),
    ("Which virus causes infectious mononucleosis?", "Epstein-Barr virus", "EBV infects B cells and causes the mononucleosis syndrome."),
    ("What is the first-line treatment for uncomplicated Plasmodium falciparum malaria?", "Artemisinin-based combination therapy", "ACTs are recommended for uncomplicated falciparum malaria."),
    ("Which condition is suggested by a 'string sign' on small-bowel imaging?", "Crohn's disease", "The string sign reflects a narrowed terminal ileum in Crohn's disease."),
    ("What is the most common site of ectopic pregnancy?", "The ampulla of the fallopian tube", "Most ectopic pregnancies implant in the tubal ampulla."),
]


def medical_o1():
    task = os.path.join(ROOT, "tasks", "medical-o1", "data")
    os.makedirs(task, exist_ok=True)
    splits = {"train": O1[:24], "validation": O1[24:30], "test": O1[30:]}
    for split, items in splits.items():
        with open(os.path.join(task, f"{split}.jsonl"), "w") as f:
            for i, (q, a, why) in enumerate(items):
                target = f"## Thinking\n\n{why}\n\n## Final Response\n\n{a}"
                f.write(json.dumps({
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": target}],
                    "ground_truth": {"answer": a},
                    "metadata": {"split": split, "index": i, "source": "hand-written HuatuoGPT-o1-style verifiable problem"},
                    "data_source": "medical_o1_verifiable",
                }, ensure_ascii=False) + "\n")


DIALOGUE_TEST = [
    ("I have had a sore throat for two days. When should I see a doctor?", "Most sore throats are viral and improve within a week. Drink fluids and rest. See a doctor if you have trouble breathing or swallowing, a high fever, or no improvement after a week."),
    ("Is it safe to take ibuprofen for a headache if I have a stomach ulcer?", "No. Ibuprofen can worsen ulcers and cause bleeding. Paracetamol is usually safer. Ask your doctor before taking any painkiller if you have an ulcer."),
    ("My child has a rash after starting amoxicillin. What should I do?", "Stop giving the medicine and contact your doctor. Seek emergency care at once if there is swelling of the face or lips or difficulty breathing."),
    ("How much water should an adult drink each day?", "Most adults need about 1.5 to 2 litres of fluid a day, more in hot weather or with exercise. Pale yellow urine is a good sign that you drink enough."),
    ("I feel dizzy when I stand up quickly. Is that dangerous?", "Brief dizziness on standing is common and often due to low blood pressure on standing. Stand up slowly and drink enough fluids. See a doctor if you faint or it happens often."),
    ("Can I exercise with a cold?", "Light exercise is usually fine if symptoms are above the neck, such as a runny nose. Rest if you have a fever, chest symptoms or body aches."),
    ("What are the warning signs of a stroke?", "Sudden face drooping, arm weakness, speech difficulty, or sudden vision loss or severe headache. Call emergency services immediately; time is critical."),
    ("How long should I wait to see a doctor for back pain?", "Most back pain improves within a few weeks with activity and simple painkillers. See a doctor sooner if you have numbness, weakness, loss of bladder control, fever or pain after an injury."),
    ("Is it normal to have a fever after a vaccine?", "A mild fever for a day or two after a vaccine is common and shows the immune system is responding. Rest and fluids help. See a doctor if the fever is high or lasts more than two days."),
    ("What should I do if I miss a dose of my blood pressure medicine?", "Take it when you remember unless it is almost time for the next dose; then skip it. Do not take a double dose. Ask your pharmacist if you are unsure."),
    ("Can stress cause stomach pain?", "Yes. Stress can cause stomach pain, indigestion and changes in bowel habit. Regular meals, sleep and exercise help. See a doctor if the pain is severe, persistent or you lose weight."),
    ("How can I tell if a cut needs stitches?", "A cut may need stitches if it is deep, gaping, longer than about 1 cm, on the face or a joint, or keeps bleeding after 10 minutes of pressure. Get it seen within a few hours."),
    ("Why do I wake up tired even after eight hours of sleep?", "Poor sleep quality, snoring or sleep apnoea, stress, caffeine or alcohol can cause this. Keep a regular schedule. See a doctor if you snore loudly or feel sleepy during the day."),
    ("Is it safe to drink alcohol while taking antibiotics?", "With most antibiotics moderate drinking is not dangerous, but it can slow recovery. With metronidazole it causes a severe reaction, so avoid alcohol. Ask your pharmacist about your medicine."),
    ("What should I do for a minor burn?", "Cool the burn under cool running water for 20 minutes, cover it with a clean non-fluffy dressing, and take a painkiller if needed. See a doctor for large, deep or facial burns."),
    ("How often should I check my blood sugar if I have type 2 diabetes?", "It depends on your treatment. People on insulin usually check several times a day; others may check less often. Follow the plan agreed with your diabetes team."),
]


def dialogue_test():
    path = os.path.join(ROOT, "tasks", "medical-dialogue", "data", "dialogue_test.json")
    system = "You are a careful medical assistant. Answer briefly and advise seeing a doctor when needed."
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], "system": system} for q, a in DIALOGUE_TEST]
    with open(path, "w") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    study_search()
    medical_o1()
    dialogue_test()
    print("ok")


# TrialPanorama-style sample-size rows (hand-written trial descriptions; answers from the same
# closed-form formulas as `medrl data synth sample-size`, with statistics.NormalDist quantiles).
SS_ROWS = [
    ("NCT-EX-0001", "A phase III, double-blind trial compared a new basal insulin with insulin glargine in adults with type 2 diabetes. The primary endpoint was change in HbA1c at 26 weeks. Assuming a standard deviation of 1.1% and a true difference of 0.4%, with a two-sided alpha of 0.05 and 90% power, and allowing for 15% dropout,", ("means", 1.1, 0.4, 0.05, 0.9, 0.15)),
    ("NCT-EX-0002", "A multicentre randomized trial compared early mobilisation with usual care after hip fracture surgery. The primary endpoint was independent walking at 30 days, expected in 45% of patients with usual care and 60% with early mobilisation. With a two-sided alpha of 0.05 and 80% power (pooled-variance normal approximation, no continuity correction),", ("props", 0.45, 0.60, 0.05, 0.8, 0.0)),
    ("NCT-EX-0003", "An open-label phase III trial compared a PD-1 inhibitor plus chemotherapy with chemotherapy alone as first-line treatment of advanced gastric cancer. The trial was powered to detect a hazard ratio for death of 0.75 with a two-sided alpha of 0.05 and 85% power; 70% of patients were expected to die during the study.", ("tte", 0.75, 0.70, 0.05, 0.85, 0.0)),
    ("NCT-EX-0004", "A randomized trial tested a nurse-led telephone follow-up program against standard discharge in heart failure. The primary endpoint was the Kansas City Cardiomyopathy Questionnaire score at 6 months (SD 20 points); a 6-point difference was considered important. Two-sided alpha 0.05, power 80%, 10% dropout.", ("means", 20.0, 6.0, 0.05, 0.8, 0.10)),
    ("NCT-EX-0005", "A cluster-free individually randomized trial compared chlorhexidine bathing with soap and water in intensive care. The primary endpoint was bloodstream infection, expected in 8% with soap and 4% with chlorhexidine. Two-sided alpha 0.05 and 80% power (pooled variance, no continuity correction).", ("props", 0.08, 0.04, 0.05, 0.8, 0.0)),
    ("NCT-EX-0006", "A phase III trial compared adjuvant capecitabine with observation after resection of biliary tract cancer. The primary endpoint was overall survival, with a target hazard ratio of 0.70, two-sided alpha 0.05 and 80% power; about 60% of patients were expected to die during follow-up.", ("tte", 0.70, 0.60, 0.05, 0.8, 0.0)),
    ("NCT-EX-0007", "A double-blind placebo-controlled trial of a CGRP antibody in episodic migraine used the change in monthly migraine days as its primary endpoint, assuming an SD of 3.2 days and a difference of 1.2 days, a two-sided alpha of 0.01 and 90% power.", ("means", 3.2, 1.2, 0.01, 0.9, 0.0)),
    ("NCT-EX-0008", "A randomized trial compared a restrictive with a liberal transfusion strategy in cardiac surgery. The primary endpoint was a composite of death or major morbidity, expected in 30% with the liberal and 24% with the restrictive strategy. Two-sided alpha 0.05, 80% power, pooled-variance normal approximation.", ("props", 0.30, 0.24, 0.05, 0.8, 0.0)),
    ("NCT-EX-0009", "A phase III trial compared lenvatinib with sorafenib in unresectable hepatocellular carcinoma; to show a hazard ratio of 0.80 for death with two-sided alpha 0.05 and 90% power, with an expected 80% of patients dying during the study,", ("tte", 0.80, 0.80, 0.05, 0.9, 0.0)),
    ("NCT-EX-0010", "A pragmatic trial compared physiotherapist-led exercise with GP care for shoulder pain. The primary endpoint was the Shoulder Pain and Disability Index (SD 24); the minimal important difference was 10 points. Two-sided alpha 0.05, power 90%, 20% expected loss to follow-up.", ("means", 24.0, 10.0, 0.05, 0.9, 0.20)),
]


def ss_solve(kind, a, b, alpha, power, dropout):
    import math
    from fractions import Fraction
    from statistics import NormalDist
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    if kind == "means":
        n = math.ceil(2 * (za + zb) ** 2 * a * a / (b * b))
        return 2 * math.ceil(Fraction(n) / (1 - Fraction(str(dropout))))
    if kind == "props":
        pbar = (a + b) / 2
        num = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(a * (1 - a) + b * (1 - b))
        n = math.ceil(num * num / ((a - b) ** 2))
        return 2 * math.ceil(Fraction(n) / (1 - Fraction(str(dropout))))
    d = math.ceil((za + zb) ** 2 / (0.25 * math.log(a) ** 2))
    return math.ceil(Fraction(d) / Fraction(str(b)))


def sample_size_style():
    path = os.path.join(ROOT, "tasks", "trialpanorama-sample-size", "data", "trialpanorama_style.jsonl")
    with open(path, "w") as f:
        for i, (trial, text, spec) in enumerate(SS_ROWS):
            q = (text + " how many participants in total (both arms, 1:1 allocation) had to be enrolled? Round up at each step. "
                 "Think step by step inside <think></think>, then give only the number inside <answer></answer>.")
            f.write(json.dumps({
                # No `prompt`: TrialPanorama's input field is `question` (extra_info here); the
                # task's prompt_template renders the user turn from it.
                "data_source": "sample_size_estimation_validation",
                "ability": "sample_size_estimation",
                "reward_model": {"style": "rule", "ground_truth": {"target": str(ss_solve(*spec)), "answer_type": "integer", "trial_id": trial, "pmid": ""}},
                "extra_info": {"split": "validation", "index": i, "question": q},
            }) + "\n")


if __name__ == "__main__":
    sample_size_style()
